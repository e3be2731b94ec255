/* Run page loss chart, part: what evaluations measured. The split's loss of each evaluated checkpoint (and of the
 * base model at iteration 0) as markers on the loss chart (trace 5, "test loss"), and, when answers were scored,
 * the small task chart #chart-task (task score against iteration).
 *
 * loraboardChart.evaluationCurve(chart) is called once by static/run_chart.js with its shared state object
 * `chart` (div, xOf, queue; read at call time). The div's data-evaluations-url is GET /api/runs/{id}/evaluations.
 * It returns:
 *   traces()   the measured split's trace for the first draw (empty until fetched),
 *   refresh()  fetch the evaluations and draw them (also called on every `job-ended` event: an evaluation ended),
 *   redraw()   draw the last payload again (after the x axis changed).
 * After each update it sets data-eval-split, data-eval-points, data-task-points and data-eval-fetches (a count) on
 * the loss chart div.
 * Needs static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var C = window.loraboardChart;
  var COLOR = "#9333ea";
  var HOVER = "%{y:.4f} (%{text})";
  var num = C.num;

  // The split pages show: test when it was measured, else the one measured most recently (as the server does).
  function shownSplit(rows) {
    if (rows.some(function (r) { return r.split === "test"; })) return "test";
    var newest = null;
    rows.forEach(function (r) { if (!newest || String(r.created_at) > String(newest.created_at)) newest = r; });
    return newest ? newest.split : null;
  }

  function label(it) { return it === 0 ? "base model" : "iter " + C.fmtInt(it); }

  function evaluationCurve(chart) {
    var div = chart.div, url = div.dataset.evaluationsUrl, taskDiv = document.getElementById("chart-task");
    var rows = [];        // the last payload (rows of the shown split, by iteration)
    var split = null;
    var busy = false, again = false;

    function traces() {
      return [{ name: "test loss", type: "scatter", mode: "markers+lines", x: [], y: [], text: [],
        line: { color: COLOR, width: 1.5, dash: "dot" },
        marker: { color: COLOR, size: 9, symbol: "square", line: { color: "#ffffff", width: 1 } },
        hovertemplate: HOVER, legendrank: 5 }];
    }

    function drawLoss() {
      var pts = rows.filter(function (r) { return num(r.loss) !== null; });
      var name = (split || "test") + " loss";
      return Promise.resolve(Plotly.restyle(div, { x: [pts.map(function (r) { return chart.xOf(r.iteration); })],
        y: [pts.map(function (r) { return r.loss; })], text: [pts.map(function (r) { return label(r.iteration); })],
        name: name }, [5]))
        .then(function () {
          div.dataset.evalSplit = split || "";
          div.dataset.evalPoints = String(pts.length);
        });
    }

    function drawTask() {
      var pts = rows.filter(function (r) { return r.task && num(r.task.score) !== null; });
      div.dataset.taskPoints = String(pts.length);
      if (!taskDiv) return null;
      if (!pts.length) { taskDiv.hidden = true; return null; }
      taskDiv.hidden = false;
      var last = Math.max(1, pts[pts.length - 1].iteration);
      var trace = { type: "scatter", mode: "markers+lines", name: "task score",
        x: pts.map(function (r) { return r.iteration; }), y: pts.map(function (r) { return r.task.score; }),
        text: pts.map(function (r) { return label(r.iteration); }), hovertemplate: "%{y:.3f} (%{text})<extra></extra>",
        line: { color: COLOR, width: 1.5 }, marker: { color: COLOR, size: 8, symbol: "square" } };
      var layout = {
        title: { text: "task score on " + (split || "test") + " (mean field accuracy)", font: { size: 12, color: "#334155" },
          x: 0.01, xanchor: "left", y: 0.97, yanchor: "top" },
        xaxis: { title: { text: "iteration", font: { size: 11 } }, range: [-0.03 * last, 1.03 * last], zeroline: false,
          tickfont: { size: 10 }, fixedrange: true },
        yaxis: { range: [0, 1.05], tickformat: ".0%", zeroline: false, tickfont: { size: 10 }, fixedrange: true },
        height: 200, margin: { l: 50, r: 16, t: 30, b: 40 }, showlegend: false,
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff"
      };
      return Promise.resolve(Plotly.react(taskDiv, [trace], layout, { displayModeBar: false, responsive: true }))
        .then(function () { taskDiv.dataset.drawn = "true"; });
    }

    function apply(data) {
      var all = C.list(data).filter(function (r) { return r && num(r.iteration) !== null; });
      split = shownSplit(all);
      rows = all.filter(function (r) { return r.split === split; })
        .sort(function (a, b) { return a.iteration - b.iteration; });
      return chart.queue(function () { return drawLoss().then(drawTask); }).then(function () {
        div.dataset.evalFetches = String(Number(div.dataset.evalFetches || 0) + 1);
      });
    }

    function redraw() { return drawLoss(); }

    // A call while one is in flight runs again after it (a job may end while the last fetch is under way).
    function refresh() {
      if (!url) return;
      if (busy) { again = true; return; }
      busy = true;
      again = false;
      C.getJSON(url).then(apply, function (err) {
        if (window.console) console.warn("loss chart: evaluations:", err);
      }).finally(function () {
        busy = false;
        if (again) refresh();
      });
    }

    document.body.addEventListener("job-ended", refresh);
    return { traces: traces, refresh: refresh, redraw: redraw };
  }

  C.evaluationCurve = evaluationCurve;
})();
