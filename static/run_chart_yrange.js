/* Run page loss chart, part: the y axis's default range. The base model's validation loss (iteration 0) is often
 * far above everything training reports (4.66 against 0.70 down to 0.39), so an automatic range would squash the
 * training into the bottom of the chart. Until the user sets the y range themselves (a zoom, or a double-click,
 * which shows everything), the range is fitted to the train points and the validations after iteration 0, with 5%
 * to spare; the iteration-0 point is included only where it is the only point there is.
 *
 * loraboardChart.yRange(chart) is called once by static/run_chart.js with its shared state object `chart`
 * (div, logY; read at call time). It returns:
 *   fit(train, val)   fit the range to these drawn points (unless the user set it): a promise,
 *   refit()           forget the user's range (the log-scale switch) so the next fit applies.
 * The chart div's data-y-fit says what the range does: "training" (iteration 0 left out), "all", or "user".
 */
(function () {
  "use strict";

  var C = window.loraboardChart;
  var PAD = 0.05;

  function finite(values) { return values.filter(function (y) { return typeof y === "number" && isFinite(y); }); }

  C.yRange = function (chart) {
    var div = chart.div, user = false, fitting = false, mine = null;

    function ours(ev) {  // the event of this module's own relayout (Plotly may emit it once the promise is done)
      if (fitting || mine === null) return fitting;
      if (mine === "auto") return ev["yaxis.autorange"] === true && !("xaxis.autorange" in ev);
      var r = ev["yaxis.range"];
      return Array.isArray(r) && r[0] === mine[0] && r[1] === mine[1];
    }

    div.on("plotly_relayout", function (ev) {
      if (!ev || ours(ev)) return;
      if ("yaxis.range[0]" in ev || "yaxis.range" in ev || "yaxis.autorange" in ev) {
        user = true;
        div.dataset.yFit = "user";
      }
    });

    function bounds(ys) {
      if (chart.logY) ys = ys.filter(function (y) { return y > 0; }).map(Math.log10);
      if (!ys.length) return null;
      var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
      var pad = (hi - lo) * PAD || Math.abs(hi) * PAD || 0.1;
      return [lo - pad, hi + pad];
    }

    function fit(train, val) {
      if (user) return Promise.resolve();
      var ys = finite(train.map(function (p) { return p.loss; }));
      var later = finite(val.filter(function (p) { return p.it > 0; }).map(function (p) { return p.loss; }));
      var leftOut = ys.length + later.length > 0 && val.some(function (p) { return p.it === 0; });
      var range = leftOut ? bounds(ys.concat(later)) : null;
      fitting = true;
      mine = range || "auto";
      div.dataset.yFit = range ? "training" : "all";
      var lay = range ? { "yaxis.range": range } : { "yaxis.autorange": true };
      return Promise.resolve(window.Plotly.relayout(div, lay)).finally(function () { fitting = false; });
    }

    return {
      fit: fit,
      refit: function () { user = false; }
    };
  };
})();
