/* Helpers shared by the loss charts (run page and compare page), on window.loraboardChart.
 *
 * Load after Plotly and before static/run_chart*.js or static/compare.js. Holds no state:
 * fetching JSON, number checks and formatting, API points -> compact objects, the debiased
 * EMA smoothing, the iteration -> tokens / estimated time axis map, and the loss chart's axes.
 * The run page's chart parts (run_chart_marks.js, run_chart_small.js, run_chart_detail.js)
 * add their factories to this same object.
 */
(function () {
  "use strict";

  var DEFAULT_TIMEOUT_MS = 10000;
  var X_TITLES = { iteration: "iteration", tokens: "trained tokens", time: "training time (estimated)" };
  var X_HOVER = { iteration: ",d", tokens: ",d", time: ",.0f" };
  var X_SUFFIX = { iteration: "", tokens: "", time: " s" };

  // GET a URL as JSON; rejects on network error, timeout (timeoutMs) or non-2xx status.
  function getJSON(url, timeoutMs) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, timeoutMs || DEFAULT_TIMEOUT_MS);
    return fetch(url, { cache: "no-store", signal: ctrl.signal, headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status + " for " + url);
        return r.json();
      })
      .finally(function () { clearTimeout(timer); });
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function list(v) { return Array.isArray(v) ? v : []; }
  function fmtLoss(v) { return v === null ? "\u2013" : String(Number(v.toFixed(4))); }
  function fmtInt(v) { return v === null ? "\u2013" : Math.round(v).toLocaleString("en-US"); }
  function fmtBytes(v) {
    for (var i = 0, units = ["B", "KiB", "MiB", "GiB"]; v !== null && v >= 1024 && i < 3; i++) v /= 1024;
    return v === null ? "\u2013" : (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }

  // Keep only well-formed API points newer than `last`, sorted by iteration.
  function fresh(points, last) {
    if (!Array.isArray(points)) return [];
    return points
      .filter(function (p) { return p && typeof p.iteration === "number" && p.iteration > last; })
      .sort(function (a, b) { return a.iteration - b.iteration; });
  }

  // API points -> compact objects.
  function trainPoint(p) {
    return { it: p.iteration, loss: num(p.train_loss), lr: num(p.learning_rate), tps: num(p.tokens_per_second),
      its: num(p.iterations_per_second), tok: num(p.trained_tokens), mem: num(p.peak_memory),
      rss: workerGB(p) };
  }
  // The worker's memory in GB: its physical footprint where recorded (macOS), else its resident memory.
  function workerGB(p) {
    var b = num(p.footprint_bytes) !== null ? p.footprint_bytes : num(p.rss_bytes);
    return b === null ? null : b / 1e9;
  }
  function valPoint(p) { return { it: p.iteration, loss: num(p.val_loss) }; }
  function lastIt(points, dflt) { return points.length ? points[points.length - 1].it : dflt; }

  // Debiased exponential moving average (TensorBoard's smoothing): the start is not pulled toward 0.
  // emaStep(state, w) maps one value at a time, carrying `state` ({last, n}, from emaState()) along,
  // so appended points continue the curve; smooth(values, w) smooths a whole series.
  function emaState() { return { last: 0, n: 0 }; }
  function emaStep(state, w) {
    return function (v) {
      if (v === null) return null;
      state.last = state.last * w + (1 - w) * v;
      state.n++;
      return state.last / (1 - Math.pow(w, state.n));
    };
  }
  function smooth(values, w) { return values.map(emaStep(emaState(), w)); }

  // The smoothing weight set on a range input (0..0.99; 0.6 without one).
  function smoothingOf(input) {
    var w = input ? parseFloat(input.value) : 0.6;
    return isFinite(w) ? Math.min(Math.max(w, 0), 0.99) : 0.6;
  }
  // The x axis mode chosen in a select (iteration | tokens | time; iteration without one).
  function xModeOf(select) { return select && X_TITLES[select.value] ? select.value : "iteration"; }

  // Piecewise-linear y(v) through the points (xs[i], ys[i]) (xs non-decreasing) and the origin;
  // past the last point the last segment's slope goes on.
  function lerp(xs, ys, v) {
    var n = xs.length;
    if (!n) return 0;
    if (v <= xs[0]) return xs[0] > 0 ? ys[0] * v / xs[0] : ys[0];
    var i = n - 2;
    if (v < xs[n - 1]) {
      var lo = 0, hi = n - 1;             // xs[lo] < v <= xs[hi]
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

  // Iteration -> trained tokens and estimated training time, built from train points in order.
  function axisMap() { return { it: [], tokens: [], time: [] }; }
  function extendAxisMap(map, p) {
    var n = map.it.length, prevIt = n ? map.it[n - 1] : 0;
    var prevTime = n ? map.time[n - 1] : 0, prevTok = n ? map.tokens[n - 1] : 0;
    map.it.push(p.it);
    map.tokens.push(p.tok !== null ? Math.max(p.tok, prevTok) : prevTok);
    // reports every k steps at s it/s: k / s seconds (evaluation and pauses are not in it)
    map.time.push(prevTime + (p.its ? Math.max(0, p.it - prevIt) / p.its : 0));
  }
  function axisMapOf(train) {
    var map = axisMap();
    train.forEach(function (p) { extendAxisMap(map, p); });
    return map;
  }
  // iteration -> x in `mode` (interpolated between the map's points), and back
  function xOfIt(map, mode, it) { return mode === "iteration" ? it : lerp(map.it, map[mode], it); }
  function itOfX(map, mode, x) { return mode === "iteration" ? x : lerp(map[mode], map.it, x); }
  // a train point's x: its own token count when it has one
  function trainX(map, mode, p) { return mode === "tokens" && p.tok !== null ? p.tok : xOfIt(map, mode, p.it); }

  // The loss chart's axes (tick labels are hidden while empty: the default ranges mean nothing).
  function lossXAxis(mode, empty) {
    return { title: { text: X_TITLES[mode] }, rangemode: "tozero", zeroline: false, showticklabels: !empty,
      hoverformat: X_HOVER[mode], ticksuffix: X_SUFFIX[mode] };
  }
  function lossYAxis(logY, empty) {
    return { title: { text: "loss" }, zeroline: false, showticklabels: !empty, type: logY ? "log" : "linear" };
  }
  // Layout keys that change with the x axis mode (for Plotly.relayout).
  function xAxisUpdate(mode) {
    return { "xaxis.title.text": X_TITLES[mode], "xaxis.hoverformat": X_HOVER[mode], "xaxis.ticksuffix": X_SUFFIX[mode] };
  }

  window.loraboardChart = {
    X_TITLES: X_TITLES, X_HOVER: X_HOVER, X_SUFFIX: X_SUFFIX,
    MODEBAR_BUTTONS: [["zoom2d", "pan2d", "resetScale2d", "toImage"]],
    getJSON: getJSON, num: num, esc: esc, list: list, fmtLoss: fmtLoss, fmtInt: fmtInt, fmtBytes: fmtBytes,
    fresh: fresh, trainPoint: trainPoint, valPoint: valPoint, lastIt: lastIt,
    emaState: emaState, emaStep: emaStep, smooth: smooth, smoothingOf: smoothingOf, xModeOf: xModeOf,
    lerp: lerp, axisMap: axisMap, extendAxisMap: extendAxisMap, axisMapOf: axisMapOf,
    xOfIt: xOfIt, itOfX: itOfX, trainX: trainX,
    lossXAxis: lossXAxis, lossYAxis: lossYAxis, xAxisUpdate: xAxisUpdate
  };
})();
