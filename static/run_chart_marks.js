/* Run page loss chart, part: the annotation marks (checkpoints, validation minimum, early stop,
 * overfitting spans) and the "waiting for the first report" note.
 *
 * loraboardChart.runMarks(chart) is called once by static/run_chart.js with its shared state object
 * `chart` (div, live, annotated, xMode, logY, xOf, queue; read at call time). It returns:
 *   traces()      the checkpoints (trace 2) and validation minimum (trace 3) traces for the first draw,
 *   notes()       the layout annotations: the "waiting" note while nothing is drawn, plus the marks,
 *   poll()        fetch the annotations now, then every 3 s while live,
 *   refresh()     fetch them once (a failure is retried on the next poll, or up to 5 times after the end),
 *   redraw()      draw the last payload again (after the x axis or log scale changed),
 *   onPointer(e)  mousemove handler: the checkpoints trace joins the hover only near a checkpoint.
 * After each update it sets data-checkpoint-markers / data-overfitting-spans (counts) on the div.
 * Needs static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var C = window.loraboardChart;
  var MARKS_MS = 3000;
  var STAR_COLOR = "#ca8a04";
  var CK_HOVER = "%{text}<extra></extra>";
  var WAITING = { text: "waiting for the first report\u2026", xref: "paper", yref: "paper", x: 0.5, y: 0.5,
    showarrow: false, font: { size: 14, color: "#64748b" } };
  var num = C.num, esc = C.esc, fmtLoss = C.fmtLoss, fmtInt = C.fmtInt;

  // Annotations payload -> checkpoint markers (on val loss, else train loss; trace 2),
  // the val-min star (trace 3), layout shapes + annotations, and the overfitting span count.
  // fx maps an iteration to the x axis; logY: annotation y positions are log10 on a log axis.
  function buildMarks(data, fx, logY) {
    var ck = { x: [], y: [], text: [], color: [], size: [] }, shapes = [], notes = [], spans = 0;
    C.list(data.checkpoints).forEach(function (c) {
      var it = c && num(c.iteration), val = c && num(c.val_loss), train = c && num(c.train_loss);
      var y = val !== null ? val : train, tags = [c.is_best && "best", c.is_deployment && "deployment"].filter(Boolean);
      if (it === null || y === null) return;
      ck.x.push(fx(it)); ck.y.push(y);
      ck.text.push(["<b>checkpoint @ " + fmtInt(it) + "</b>" + (tags.length ? " (" + tags.join(", ") + ")" : ""),
        "val loss " + fmtLoss(val) + " \u00b7 train loss " + fmtLoss(train),
        fmtInt(num(c.trained_tokens)) + " tokens \u00b7 " + C.fmtBytes(num(c.size_bytes))]
        .concat(c.note ? ["note: " + esc(String(c.note).slice(0, 60))] : []).join("<br>"));
      ck.color.push(c.is_deployment ? "#7c3aed" : c.is_best ? "#16a34a" : "#475569");
      ck.size.push(tags.length ? 12 : 10);
    });
    C.list(data.overfitting).forEach(function (s) {
      if (!Array.isArray(s) || num(s[0]) === null || num(s[1]) === null) return;
      spans++;
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: fx(s[0]), x1: fx(s[1]), y0: 0, y1: 1, layer: "below",
        fillcolor: "rgba(220, 38, 38, 0.08)", line: { width: 0 } });
      // an annotation rather than a shape label: its background keeps it legible over the early-stop line
      notes.push({ text: "overfitting", x: fx(s[0]), y: 1, xref: "x", yref: "paper", xanchor: "left", yanchor: "top",
        showarrow: false, font: { size: 11, color: "#b91c1c" }, bgcolor: "rgba(254, 242, 242, 0.9)" });
    });
    var stop = data.early_stop || {}, at = num(stop.iteration);
    if (at !== null) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: fx(at), x1: fx(at), y0: 0, y1: 1,
        line: { color: "#b91c1c", width: 1.5, dash: "dash" } });
      notes.push({ text: "early stop", hovertext: esc(stop.reason || "early stop") + " (iter " + fmtInt(at) + ")",
        x: fx(at), y: 0.5, xref: "x", yref: "paper", textangle: -90, xanchor: "right", showarrow: false,
        font: { size: 11, color: "#b91c1c" }, bgcolor: "rgba(255,255,255,0.85)" });
    }
    var vmin = data.val_min || {}, vx = num(vmin.iteration), vy = num(vmin.val_loss), star = vx !== null && vy !== null;
    if (star) {
      notes.push({ text: "val min " + fmtLoss(vy) + " @ " + fmtInt(vx), x: fx(vx), y: logY && vy > 0 ? Math.log10(vy) : vy,
        xref: "x", yref: "y", showarrow: true, arrowhead: 0, arrowcolor: "#a16207", ax: 0, ay: -30,
        font: { size: 11, color: "#713f12" }, bgcolor: "rgba(255,255,255,0.9)", bordercolor: "#eab308", borderpad: 2 });
    }
    return { ck: ck, star: { x: star ? [fx(vx)] : [], y: star ? [vy] : [] }, shapes: shapes, annotations: notes, spans: spans };
  }

  function runMarks(chart) {
    var div = chart.div;
    var marksUrl = div.dataset.annotationsUrl;
    var marks = { annotations: [] };     // annotation marks drawn (buildMarks)
    var marksData = null;                // the last annotations payload fetched
    var marksJSON = null;                // the annotations payload drawn (and how), serialized
    var busy = false, again = false, fails = 0;

    function traces() {
      return [
        { name: "checkpoints", type: "scatter", mode: "markers", x: [], y: [], text: [],
          marker: { symbol: "diamond", size: 9, color: "#475569", line: { color: "#ffffff", width: 1 } },
          hoverinfo: "skip", legendrank: 4 },  // see onPointer
        { name: "validation minimum", type: "scatter", mode: "markers", x: [], y: [], showlegend: false,
          hoverinfo: "skip", marker: { symbol: "star-open", size: 20, color: STAR_COLOR, line: { width: 2 } } }
      ];
    }

    // Layout annotations: the "waiting" note while empty, plus the annotation marks.
    // On a run that ended without a report (e.g. failed while loading) the note says so.
    function notes() {
      var note = chart.live ? WAITING : Object.assign({}, WAITING, { text: "the run reported no losses" });
      return (chart.annotated ? [Object.assign({}, note)] : []).concat(marks.annotations);
    }

    // Draw an annotations payload (only when it, or the axes it is placed on, changed).
    function apply(data, force) {
      if (!data || typeof data !== "object") return null;
      var text = JSON.stringify(data) + "|" + chart.xMode + "|" + chart.logY;
      if (text === marksJSON && !force) return null;
      var m = marks = buildMarks(data, chart.xOf, chart.logY);
      return Promise.resolve(Plotly.restyle(div, { x: [m.ck.x, m.star.x], y: [m.ck.y, m.star.y], text: [m.ck.text, []],
        "marker.color": [m.ck.color, STAR_COLOR], "marker.size": [m.ck.size, 20] }, [2, 3]))
        .then(function () { return Plotly.relayout(div, { shapes: m.shapes, annotations: notes() }); })
        .then(function () {
          marksJSON = text;
          div.dataset.checkpointMarkers = String(m.ck.x.length);
          div.dataset.overfittingSpans = String(m.spans);
        });
    }

    function redraw() { return apply(marksData, true); }

    // Fetch annotations; a failure is retried on the next poll (on an ended run's page,
    // up to 5 times on its own). A call while one is in flight runs again after it.
    function refresh() {
      if (!marksUrl) return;
      if (busy) { again = true; return; }
      busy = true;
      again = false;
      C.getJSON(marksUrl).then(function (data) {
        marksData = data;
        return chart.queue(function () { return apply(data); });
      }).then(function () { fails = 0; }, function (err) {
        fails++;
        if (window.console) console.warn("loss chart: annotations will retry:", err);
      }).finally(function () {
        busy = false;
        if (again) refresh();
        else if (fails && fails < 5 && !chart.live) setTimeout(refresh, MARKS_MS);
      });
    }

    function poll() {
      refresh();
      if (chart.live) setTimeout(poll, MARKS_MS);
    }

    // The unified hover label would list the nearest checkpoint from anywhere on the
    // chart, so the checkpoints trace joins the hover only while the pointer is on one
    // (and a hovertemplate would override hoverinfo "skip", so it comes and goes too).
    function onPointer(e) {
      var fl = div._fullLayout, t = div.data && div.data[2], near = false;
      if (!fl || !fl.xaxis || !fl.yaxis || !t) return;
      var r = div.getBoundingClientRect(), ox = r.left + fl.xaxis._offset, oy = r.top + fl.yaxis._offset;
      for (var i = 0; i < t.x.length && !near; i++) {
        var dx = ox + fl.xaxis.c2p(t.x[i]) - e.clientX, dy = oy + fl.yaxis.c2p(t.y[i]) - e.clientY;
        near = dx * dx + dy * dy <= 14 * 14;
      }
      if (near === (t.hoverinfo !== "skip")) return;
      Plotly.restyle(div, near ? { hoverinfo: "all", hovertemplate: CK_HOVER } : { hoverinfo: "skip", hovertemplate: null }, [2]);
    }

    return { traces: traces, notes: notes, poll: poll, refresh: refresh, redraw: redraw, onPointer: onPointer };
  }

  C.runMarks = runMarks;
})();
