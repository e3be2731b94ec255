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
 * Needs Plotly (the basic bundle) loaded before this script.
 */
(function () {
  "use strict";

  var POLL_MS = 5000;
  var FETCH_TIMEOUT_MS = 15000;
  var TERMINAL = ["completed", "stopped", "early_stopped", "failed", "interrupted"];
  var X_TITLES = { iteration: "iteration", tokens: "trained tokens", time: "training time (estimated)" };
  var X_HOVER = { iteration: ",d", tokens: ",d", time: ",.0f" };
  var X_SUFFIX = { iteration: "", tokens: "", time: " s" };

  function getJSON(url) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, FETCH_TIMEOUT_MS);
    return fetch(url, { cache: "no-store", signal: ctrl.signal, headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status + " for " + url);
        return r.json();
      })
      .finally(function () { clearTimeout(timer); });
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function short(t) { t = String(t); return t.length > 40 ? t.slice(0, 39) + "\u2026" : t; }

  // API points -> compact objects, sorted by iteration, malformed ones dropped.
  function trainPoints(list) {
    return (Array.isArray(list) ? list : []).filter(function (p) { return p && num(p.iteration) !== null; })
      .map(function (p) {
        return { it: p.iteration, loss: num(p.train_loss), tok: num(p.trained_tokens), its: num(p.iterations_per_second) };
      })
      .sort(function (a, b) { return a.it - b.it; });
  }
  function valPoints(list) {
    return (Array.isArray(list) ? list : []).filter(function (p) { return p && num(p.iteration) !== null; })
      .map(function (p) { return { it: p.iteration, loss: num(p.val_loss) }; })
      .sort(function (a, b) { return a.it - b.it; });
  }

  // Debiased exponential moving average (TensorBoard's smoothing): the start is not pulled toward 0.
  function smooth(values, w) {
    var last = 0, n = 0;
    return values.map(function (v) {
      if (v === null) return null;
      last = last * w + (1 - w) * v;
      n++;
      return last / (1 - Math.pow(w, n));
    });
  }

  // Piecewise-linear y(v) through (xs[i], ys[i]) (xs non-decreasing) and the origin; the last slope goes on.
  function lerp(xs, ys, v) {
    var n = xs.length;
    if (!n) return 0;
    if (v <= xs[0]) return xs[0] > 0 ? ys[0] * v / xs[0] : ys[0];
    var i = n - 2;
    if (v < xs[n - 1]) {
      var lo = 0, hi = n - 1;
      while (hi - lo > 1) {
        var mid = (lo + hi) >> 1;
        if (xs[mid] < v) lo = mid; else hi = mid;
      }
      i = lo;
    }
    if (i < 0) return xs[0] > 0 ? ys[0] * v / xs[0] : ys[0];
    var dx = xs[i + 1] - xs[i];
    return dx > 0 ? ys[i] + (ys[i + 1] - ys[i]) * (v - xs[i]) / dx : ys[i + 1];
  }

  // Iteration -> trained tokens and estimated training time, from a run's train points.
  function axisMap(train) {
    var map = { it: [], tokens: [], time: [] }, prevIt = 0, tok = 0, time = 0;
    train.forEach(function (p) {
      tok = p.tok !== null ? Math.max(p.tok, tok) : tok;
      time += p.its ? Math.max(0, p.it - prevIt) / p.its : 0;  // k steps at s it/s take k / s seconds
      prevIt = p.it;
      map.it.push(p.it); map.tokens.push(tok); map.time.push(time);
    });
    return map;
  }

  function init(div, runs) {
    var ctl = {
      smoothing: document.getElementById("smoothing"),
      smoothingValue: document.getElementById("smoothing-value"),
      logY: document.getElementById("log-y"),
      xAxis: document.getElementById("x-axis"),
      refresh: document.getElementById("compare-refresh")
    };
    var data = runs.map(function () { return { train: [], val: [], map: axisMap([]) }; });
    var live = div.dataset.live === "true";
    var draws = 0, busy = false, pollTimer = null;
    var chain = Promise.resolve();

    function smoothing() {
      var w = ctl.smoothing ? parseFloat(ctl.smoothing.value) : 0.6;
      return isFinite(w) ? Math.min(Math.max(w, 0), 0.99) : 0.6;
    }
    function xMode() { return ctl.xAxis && X_TITLES[ctl.xAxis.value] ? ctl.xAxis.value : "iteration"; }
    function logY() { return !!(ctl.logY && ctl.logY.checked); }

    function traces() {
      var mode = xMode(), w = smoothing(), out = [];
      runs.forEach(function (run, i) {
        var d = data[i], group = "run-" + run.id, label = "#" + run.id + " " + esc(short(run.name));
        var xOf = function (it) { return mode === "iteration" ? it : lerp(d.map.it, d.map[mode], it); };
        var tx = d.train.map(function (p) { return mode === "tokens" && p.tok !== null ? p.tok : xOf(p.it); });
        var ty = d.train.map(function (p) { return p.loss; });
        var it = d.train.map(function (p) { return p.it; });
        out.push({ name: label + " raw", type: "scatter", mode: "lines", x: tx, y: ty, legendgroup: group,
          showlegend: false, hoverinfo: "skip", opacity: 0.25, line: { color: run.color, width: 1 } });
        out.push({ name: label, type: "scatter", mode: "lines", x: tx, y: smooth(ty, w), customdata: it,
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
        xaxis: { title: { text: X_TITLES[mode] }, rangemode: "tozero", zeroline: false, showticklabels: !empty,
          hoverformat: X_HOVER[mode], ticksuffix: X_SUFFIX[mode] },
        yaxis: { title: { text: "loss" }, zeroline: false, showticklabels: !empty, type: logY() ? "log" : "linear" },
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
          modeBarButtons: [["zoom2d", "pan2d", "resetScale2d", "toImage"]] }))
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
          data[i] = { train: train, val: valPoints(m && m.val), map: axisMap(train) };
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
