/* Run page loss chart, part: zoom detail for long runs.
 *
 * The overview is downsampled by the server; zooming or panning fetches the visible iteration
 * window in detail (data-detail-fetches counts the fetches), and autorange (double-click) goes back
 * to the overview. loraboardChart.zoomDetail(chart) is called once by static/run_chart.js with its
 * shared state object `chart` (div, ov, thinned, itOf, url(params), queue, redraw, maxPoints; read at
 * call time). It returns:
 *   shown(kind)     the points traces 0 / 1 show ("train" / "val"): the overview, with the window in detail,
 *   coverEnd(kind)  the highest iteration the window covers for that series (null: no window),
 *   label()         "<start>-<end>" for the window drawn, "false" without one (data-detail),
 *   onRelayout(ev)  the loss chart's plotly_relayout handler.
 * Needs static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var C = window.loraboardChart;
  var DETAIL_DELAY_MS = 250;          // zoom / pan settles before the window is fetched

  function zoomDetail(chart) {
    var det = null;                    // zoomed window: {start, end, train, val, trainEnd, valEnd}
    var timer = null, seq = 0, fetches = 0;

    // Highest iteration a detail series covers (start - 1: it covers nothing).
    function coverEnd(kind) { return det ? det[kind + "End"] : null; }

    function shown(kind) {
      var ov = chart.ov[kind];
      if (!det) return ov.slice();
      var hi = det[kind + "End"], lo = det.start;
      return ov.filter(function (p) { return p.it < lo; })
        .concat(det[kind])
        .concat(ov.filter(function (p) { return p.it > hi; }));
    }

    function label() { return det ? det.start + "-" + det.end : "false"; }

    function backToOverview() { chart.queue(function () { det = null; return chart.redraw(); }); }

    function load(range) {
      var mine = ++seq;
      if (!range) {
        if (det) backToOverview();
        return;
      }
      var a = chart.itOf(Math.min(range[0], range[1])), b = chart.itOf(Math.max(range[0], range[1]));
      var start = Math.max(0, Math.floor(a)), end = Math.ceil(b);
      if (!chart.thinned) {  // everything is drawn already
        if (det) backToOverview();
        return;
      }
      if (det && det.start === start && det.end === end) return;
      fetches++;
      chart.div.dataset.detailFetches = String(fetches);
      C.getJSON(chart.url({ start: start, end: end, max_points: chart.maxPoints })).then(function (data) {
        if (mine !== seq) return null;  // zoomed again meanwhile
        var inWindow = function (p) { return p.iteration <= end; };
        var t = C.fresh(data && data.train, start - 1).filter(inWindow).map(C.trainPoint);
        var v = C.fresh(data && data.val, start - 1).filter(inWindow).map(C.valPoint);
        return chart.queue(function () {
          if (mine !== seq) return null;
          det = { start: start, end: end, train: t, val: v,
            trainEnd: C.lastIt(t, start - 1), valEnd: C.lastIt(v, start - 1) };
          return chart.redraw();
        });
      }, function (err) { if (window.console) console.warn("loss chart: zoom window fetch failed:", err); });
    }

    function onRelayout(ev) {
      if (!ev) return;
      var range = null;
      if (Array.isArray(ev["xaxis.range"])) range = ev["xaxis.range"];
      else if (ev["xaxis.range[0]"] !== undefined && ev["xaxis.range[1]"] !== undefined) {
        range = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
      } else if (ev["xaxis.autorange"] !== true) return;  // not about the x axis
      range = range && range.map(Number);
      if (range && !(isFinite(range[0]) && isFinite(range[1]))) return;
      clearTimeout(timer);
      timer = setTimeout(function () { load(range); }, range ? DETAIL_DELAY_MS : 0);
    }

    return { shown: shown, coverEnd: coverEnd, label: label, onRelayout: onRelayout };
  }

  C.zoomDetail = zoomDetail;
})();
