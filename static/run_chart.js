/* Live loss chart for a run page.
 *
 * Markup: <div id="loss-chart" data-metrics-url="/api/runs/7/metrics"
 *              data-run-url="/api/runs/7" data-live="true"></div>
 * Needs Plotly loaded before this script. Draws once with Plotly.newPlot, then
 * (if live) polls every second and appends new points with Plotly.extendTraces.
 * After each draw it sets data-train-points / data-val-points (points drawn)
 * and data-drawn="true"; when the run ends it sets data-live="false" and fires
 * a bubbling "loraboard-run-ended" event (detail: {status}).
 */
(function () {
  "use strict";

  var POLL_MS = 500;
  var FETCH_TIMEOUT_MS = 10000;
  var TERMINAL = ["completed", "stopped", "early_stopped", "failed", "interrupted"];
  var WAITING = "waiting for the first report\u2026";
  var HOVER = "%{y:.4f} (iter %{x})";  // traces have different x values: show each one's

  // GET a URL as JSON; rejects on network error, timeout or non-2xx status.
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

  // Keep only well-formed points newer than `last`, sorted by iteration.
  function fresh(points, last) {
    if (!Array.isArray(points)) return [];
    return points
      .filter(function (p) { return p && typeof p.iteration === "number" && p.iteration > last; })
      .sort(function (a, b) { return a.iteration - b.iteration; });
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  function init(div) {
    var metricsUrl = div.dataset.metricsUrl;
    var runUrl = div.dataset.runUrl;
    var live = div.dataset.live === "true";
    var last = { train: -1, val: -1 };   // highest iteration drawn per trace
    var count = { train: 0, val: 0 };    // points drawn per trace
    var annotated = false;               // "waiting" note currently shown?
    var busy = false;                    // a tick is in flight
    var catchUp = false;                 // non-live page whose first fetch failed

    if (!metricsUrl || typeof window.Plotly === "undefined") {
      div.textContent = "Chart unavailable (missing metrics URL or Plotly).";
      return;
    }

    // Split a metrics payload into the new x/y arrays per trace, and advance `last`.
    function take(data) {
      var t = fresh(data && data.train, last.train);
      var v = fresh(data && data.val, last.val);
      if (t.length) last.train = t[t.length - 1].iteration;
      if (v.length) last.val = v[v.length - 1].iteration;
      count.train += t.length;
      count.val += v.length;
      return {
        train: { x: t.map(function (p) { return p.iteration; }), y: t.map(function (p) { return num(p.train_loss); }) },
        val: { x: v.map(function (p) { return p.iteration; }), y: v.map(function (p) { return num(p.val_loss); }) }
      };
    }

    function markDrawn() {
      div.dataset.trainPoints = String(count.train);
      div.dataset.valPoints = String(count.val);
      div.dataset.drawn = "true";
    }

    // First (and only) newPlot; `data` may be null if the first fetch failed.
    function firstDraw(data) {
      var d = take(data || {});
      annotated = count.train + count.val === 0;
      var traces = [
        { name: "train loss", type: "scatter", mode: "lines", x: d.train.x, y: d.train.y,
          line: { color: "#2563eb", width: 2 }, hovertemplate: HOVER },
        { name: "validation loss", type: "scatter", mode: "lines+markers", x: d.val.x, y: d.val.y,
          line: { color: "#ea580c", width: 2 }, marker: { size: 6 }, hovertemplate: HOVER }
      ];
      var layout = {
        // tick labels are hidden while empty (the default 0..6 / -1..4 ranges mean nothing)
        xaxis: { title: { text: "iteration" }, rangemode: "tozero", zeroline: false, showticklabels: !annotated },
        yaxis: { title: { text: "loss" }, zeroline: false, showticklabels: !annotated },
        hovermode: "x unified",
        hoverdistance: -1,               // always show the nearest point of each trace
        hoverlabel: { namelength: -1 },  // don't truncate "validation loss"
        margin: { l: 60, r: 20, t: 30, b: 50 },
        legend: { orientation: "h", x: 0, y: 1.12 },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#ffffff",
        uirevision: "keep",  // keep the user's zoom across updates
        annotations: annotated ? [{ text: WAITING, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
          showarrow: false, font: { size: 14, color: "#64748b" } }] : []
      };
      var config = { responsive: true, displaylogo: false, displayModeBar: false };
      return Promise.resolve(Plotly.newPlot(div, traces, layout, config)).then(markDrawn);
    }

    // Append whatever is new in `data` to the existing traces.
    function append(data) {
      var d = take(data);
      var xs = [], ys = [], idx = [];
      if (d.train.x.length) { xs.push(d.train.x); ys.push(d.train.y); idx.push(0); }
      if (d.val.x.length) { xs.push(d.val.x); ys.push(d.val.y); idx.push(1); }
      if (!idx.length) { markDrawn(); return Promise.resolve(); }
      var p = Promise.resolve(Plotly.extendTraces(div, { x: xs, y: ys }, idx));
      if (annotated) {
        annotated = false;
        p = p.then(function () {
          return Plotly.relayout(div, { annotations: [], "xaxis.showticklabels": true, "yaxis.showticklabels": true });
        });
      }
      return p.then(markDrawn);
    }

    // URL for the next incremental fetch: after = min(last train, last val).
    function nextMetricsUrl() {
      var u = new URL(metricsUrl, window.location.href);
      u.searchParams.set("after", String(Math.min(last.train, last.val)));
      return u.toString();
    }

    function finish(status) {
      live = false;
      div.dataset.live = "false";
      div.dispatchEvent(new CustomEvent("loraboard-run-ended", { bubbles: true, detail: { status: status } }));
    }

    // One poll: check the run status, then fetch and append new metrics.
    // Errors are swallowed so the next tick simply retries.
    function tick() {
      if (busy) return;
      busy = true;
      var status = null;
      var statusReq = runUrl ? getJSON(runUrl).then(function (r) { status = r && r.status; }, function () {}) : Promise.resolve();
      statusReq
        .then(function () { return getJSON(nextMetricsUrl()); })
        .then(append)
        .then(function () {  // a fetch after a terminal status was the final one
          if (catchUp) live = false;
          else if (TERMINAL.indexOf(status) !== -1) finish(status);
        })
        .catch(function (err) { if (window.console) console.warn("loss chart: will retry:", err); })
        .finally(function () {
          busy = false;
          if (live) setTimeout(tick, POLL_MS);
        });
    }

    getJSON(metricsUrl)
      .catch(function (err) {
        if (window.console) console.warn("loss chart: initial fetch failed:", err);
        catchUp = !live;  // retry on the next tick (after=-1 means everything)
        live = true;
        return null;
      })
      .then(firstDraw)
      .then(function () { if (live) setTimeout(tick, POLL_MS); })
      .catch(function (err) { if (window.console) console.error("loss chart: cannot draw:", err); });
  }

  function start() {
    var div = document.getElementById("loss-chart");
    if (div && !div.dataset.chartInit) {
      div.dataset.chartInit = "1";
      init(div);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
