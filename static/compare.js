/* Compare page: the loss curves of several runs overlaid in one Plotly chart.
 *
 * Markup: <div id="compare-chart" data-live="true|false"></div> and
 * <script type="application/json" id="compare-runs">[{id, name, color, metrics_url, run_url, live}, ...]</script>.
 * Controls (by id): #smoothing (range 0..0.99) with #smoothing-value, #log-y (checkbox), #x-axis (select:
 * iteration | tokens | time), and an optional #compare-refresh button.
 *
 * Per run, in the runs' order, three traces: raw train loss (faint), train loss smoothed (debiased EMA, as
 * TensorBoard does it), validation loss (dashed, with markers); all in the run's color. Data comes from each
 * run's metrics URL (LTTB-downsampled by the server). While any run is live, everything is fetched again every
 * 5 s; the Refresh button fetches at once.
 * After each draw it sets on the chart div: data-drawn="true", data-draws (count), data-traces (traces drawn),
 * data-runs-drawn (runs with at least one point), data-smoothing, data-log-y, data-x-axis and data-live.
 * Needs Plotly (the basic bundle) and static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var POLL_MS = 5000;
  var FETCH_TIMEOUT_MS = 15000;
  var TERMINAL = ["completed", "stopped", "early_stopped", "failed", "interrupted"];
  var C = window.loraboardChart;

  function short(t) { t = String(t); return t.length > 40 ? t.slice(0, 39) + "\u2026" : t; }
  function getJSON(url) { return C.getJSON(url, FETCH_TIMEOUT_MS); }

  // API points -> compact objects, sorted by iteration, malformed ones dropped.
  function trainPoints(list) { return C.fresh(list, -Infinity).map(C.trainPoint); }
  function valPoints(list) { return C.fresh(list, -Infinity).map(C.valPoint); }

  function init(div, runs) {
    var ctl = {
      smoothing: document.getElementById("smoothing"),
      smoothingValue: document.getElementById("smoothing-value"),
      logY: document.getElementById("log-y"),
      xAxis: document.getElementById("x-axis"),
      refresh: document.getElementById("compare-refresh")
    };
    var data = runs.map(function () { return { train: [], val: [], map: C.axisMap() }; });
    var live = div.dataset.live === "true";
    var draws = 0, busy = false, pollTimer = null;
    var chain = Promise.resolve();

    function smoothing() { return C.smoothingOf(ctl.smoothing); }
    function xMode() { return C.xModeOf(ctl.xAxis); }
    function logY() { return !!(ctl.logY && ctl.logY.checked); }

    function traces() {
      var mode = xMode(), w = smoothing(), out = [];
      runs.forEach(function (run, i) {
        var d = data[i], group = "run-" + run.id, label = "#" + run.id + " " + C.esc(short(run.name));
        var xOf = function (it) { return C.xOfIt(d.map, mode, it); };
        var tx = d.train.map(function (p) { return C.trainX(d.map, mode, p); });
        var ty = d.train.map(function (p) { return p.loss; });
        var it = d.train.map(function (p) { return p.it; });
        out.push({ name: label + " raw", type: "scatter", mode: "lines", x: tx, y: ty, legendgroup: group,
          showlegend: false, hoverinfo: "skip", opacity: 0.25, line: { color: run.color, width: 1 } });
        out.push({ name: label, type: "scatter", mode: "lines", x: tx, y: C.smooth(ty, w), customdata: it,
          legendgroup: group, line: { color: run.color, width: 2 },
          hovertemplate: "train %{y:.4f} (iter %{customdata:,d})" });
        out.push({ name: "#" + run.id + " val", type: "scatter", mode: "lines+markers", legendgroup: group,
          x: d.val.map(function (p) { return xOf(p.it); }), y: d.val.map(function (p) { return p.loss; }),
          customdata: d.val.map(function (p) { return p.it; }), showlegend: false,
          line: { color: run.color, width: 1.5, dash: "dash" }, marker: { size: 7, color: run.color },
          hovertemplate: "val %{y:.4f} (iter %{customdata:,d})" });
      });
      return out;
    }

    function layout(empty) {
      var mode = xMode();
      return {
        xaxis: C.lossXAxis(mode, empty),
        yaxis: C.lossYAxis(logY(), empty),
        hovermode: "x unified", hoverlabel: { namelength: -1 },
        margin: { l: 60, r: 20, t: 30, b: 50 },
        legend: { orientation: "h", x: 0, y: 1.12 },
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff",
        uirevision: mode + (logY() ? "-log" : ""),  // keep a zoom across refreshes, not across axis changes
        annotations: empty ? [{ text: "no reports yet", xref: "paper", yref: "paper", x: 0.5, y: 0.5,
          showarrow: false, font: { size: 14, color: "#64748b" } }] : []
      };
    }

    function render() {
      var drawnRuns = data.filter(function (d) { return d.train.length + d.val.length > 0; }).length;
      var t = traces();
      return Promise.resolve(Plotly.react(div, t, layout(drawnRuns === 0),
        { responsive: true, displaylogo: false, displayModeBar: "hover",
          modeBarButtons: C.MODEBAR_BUTTONS }))
        .then(function () {
          draws++;
          div.dataset.draws = String(draws);
          div.dataset.traces = String(div.data ? div.data.length : t.length);
          div.dataset.runsDrawn = String(drawnRuns);
          div.dataset.smoothing = smoothing().toFixed(2);
          div.dataset.logY = String(logY());
          div.dataset.xAxis = xMode();
          div.dataset.live = String(live);
          div.dataset.drawn = "true";
        });
    }

    function queueRender() {
      chain = chain.then(render).catch(function (err) { if (window.console) console.warn("compare chart:", err); });
      return chain;
    }

    // Fetch every run's metrics (and, for live ones, status); a run whose fetch fails keeps its last data.
    function load() {
      return Promise.all(runs.map(function (run, i) {
        var status = run.live ? getJSON(run.run_url).then(function (r) {
          run.live = TERMINAL.indexOf(r && r.status) === -1;
        }, function () {}) : Promise.resolve();
        return status.then(function () { return getJSON(run.metrics_url); }).then(function (m) {
          var train = trainPoints(m && m.train);
          data[i] = { train: train, val: valPoints(m && m.val), map: C.axisMapOf(train) };
        }, function (err) { if (window.console) console.warn("compare chart: run " + run.id + ":", err); });
      })).then(function () {
        live = runs.some(function (run) { return run.live; });
      });
    }

    function refresh() {
      if (busy) return chain;
      busy = true;
      clearTimeout(pollTimer);
      return load().then(queueRender).finally(function () {
        busy = false;
        if (live) pollTimer = setTimeout(refresh, POLL_MS);
      });
    }

    function showSmoothing() {
      if (ctl.smoothingValue) ctl.smoothingValue.textContent = smoothing().toFixed(2);
    }

    showSmoothing();
    if (ctl.smoothing) ctl.smoothing.addEventListener("input", function () { showSmoothing(); queueRender(); });
    if (ctl.logY) ctl.logY.addEventListener("change", queueRender);
    if (ctl.xAxis) ctl.xAxis.addEventListener("change", queueRender);
    if (ctl.refresh) ctl.refresh.addEventListener("click", refresh);
    refresh();
  }

  function start() {
    var div = document.getElementById("compare-chart");
    var source = document.getElementById("compare-runs");
    if (!div || !source || div.dataset.chartInit) return;
    div.dataset.chartInit = "1";
    if (typeof window.Plotly === "undefined") {
      div.textContent = "Chart unavailable (Plotly did not load).";
      return;
    }
    var runs;
    try {
      runs = JSON.parse(source.textContent);
    } catch (err) {
      div.textContent = "Chart unavailable (the run list could not be read).";
      return;
    }
    init(div, Array.isArray(runs) ? runs : []);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
