/* Live loss chart for a run page, with TensorBoard-like controls and small metric charts.
 *
 * Markup: <div id="loss-chart" data-metrics-url="/api/runs/7/metrics" data-events-url="/api/runs/7/events"
 *              data-annotations-url="/api/runs/7/annotations" data-live="true"></div>
 * Optional controls (found by id anywhere on the page): #smoothing (range 0..0.99) with
 * #smoothing-value (its shown value), #log-y (checkbox), #x-axis (select: iteration | tokens |
 * time), and the small charts #chart-lr, #chart-tps, #chart-its, #chart-mem.
 *
 * Needs Plotly and static/run_live.js loaded before this script. Draws once with Plotly.newPlot, then
 * (if live) listens to the run's event stream (server-sent events, see run_live.js) and appends the
 * points it pushes with Plotly.extendTraces; data-stream-state says how the stream is
 * (connecting / open / reconnecting / closed).
 * Traces: 0 raw train loss (faint), 1 validation loss, 2 checkpoints, 3 validation minimum,
 * 4 train loss smoothed (EMA, debiased like TensorBoard; recomputed from trace 0's points).
 * After each draw it sets data-train-points / data-val-points (points drawn in traces 0 / 1)
 * and data-drawn="true"; when the run ends it sets data-live="false" and fires a bubbling
 * "loraboard-run-ended" event (detail: {status, end: the stream's end event data}).
 * Long runs: the first fetch asks for ?max_points=2000 (downsampled server-side; data-total-train
 * / data-total-val say how many points there are). Zooming or panning fetches that iteration
 * window in detail (data-detail="<start>-<end>", data-detail-fetches counts the fetches);
 * autorange (double-click) goes back to the overview (data-detail="false").
 * Controls: data-smoothing, data-log-y and data-x-axis reflect what is drawn.
 * Annotations (optional data-annotations-url) are fetched at start, every 3 s while
 * live and once after the run ends: trace 2 marks checkpoints, trace 3 the validation
 * minimum; layout shapes/annotations show the early stop and overfitting spans (all placed by
 * iteration and converted to tokens / time when the x axis shows those).
 * After each update it sets data-checkpoint-markers / data-overfitting-spans (counts).
 */
(function () {
  "use strict";

  var RETRY_MS = 2000;                // a failed first fetch is tried again after this long
  var MARKS_MS = 3000;
  var FETCH_TIMEOUT_MS = 10000;
  var MAX_POINTS = 2000;              // per series, for the overview and for a zoomed window
  var REFRESH_AT = 3 * MAX_POINTS;    // overview grown this big by live appends: fetch it again, downsampled
  var DETAIL_DELAY_MS = 250;          // zoom / pan settles before the window is fetched
  var WAITING = { text: "waiting for the first report\u2026", xref: "paper", yref: "paper", x: 0.5, y: 0.5,
    showarrow: false, font: { size: 14, color: "#64748b" } };
  var X_TITLES = { iteration: "iteration", tokens: "trained tokens", time: "training time (estimated)" };
  var X_HOVER = { iteration: ",d", tokens: ",d", time: ",.0f" };
  var X_SUFFIX = { iteration: "", tokens: "", time: " s" };
  var TRAIN_HOVER = "%{y:.4f} (iter %{customdata[0]:,d})" +
    "<br>learning rate %{customdata[1]:.3~e}" +
    "<br>tokens/s %{customdata[2]:,.0f} \u00b7 it/s %{customdata[3]:.3~f}" +
    "<br>trained tokens %{customdata[4]:,d}" +
    "<br>peak memory %{customdata[5]:.2f} GB";
  var SMOOTH_HOVER = "%{y:.4f}";
  var VAL_HOVER = "%{y:.4f} (iter %{customdata[0]:,d})";  // traces have different x values: show each one's
  var CK_HOVER = "%{text}<extra></extra>";
  var STAR_COLOR = "#ca8a04";
  var TRAIN_COLOR = "#2563eb";
  var SMALL = [
    { id: "chart-lr", key: "lr", title: "learning rate", color: "#7c3aed", hover: "%{y:.3~e}", tickformat: "~g" },
    { id: "chart-tps", key: "tps", title: "tokens/s", color: "#0891b2", hover: "%{y:,.0f}" },
    { id: "chart-its", key: "its", title: "iterations/s", color: "#0d9488", hover: "%{y:.3~f}" },
    { id: "chart-mem", key: "mem", title: "peak memory (GB)", color: "#db2777", hover: "%{y:.2f} GB" }
  ];

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
  function fmtLoss(v) { return v === null ? "\u2013" : String(Number(v.toFixed(4))); }
  function fmtInt(v) { return v === null ? "\u2013" : Math.round(v).toLocaleString("en-US"); }
  function fmtBytes(v) {
    for (var i = 0, units = ["B", "KiB", "MiB", "GiB"]; v !== null && v >= 1024 && i < 3; i++) v /= 1024;
    return v === null ? "\u2013" : (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }
  function esc(t) { return String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function list(v) { return Array.isArray(v) ? v : []; }

  // API points -> compact objects.
  function trainPoint(p) {
    return { it: p.iteration, loss: num(p.train_loss), lr: num(p.learning_rate), tps: num(p.tokens_per_second),
      its: num(p.iterations_per_second), tok: num(p.trained_tokens), mem: num(p.peak_memory) };
  }
  function valPoint(p) { return { it: p.iteration, loss: num(p.val_loss) }; }
  function lastIt(points, dflt) { return points.length ? points[points.length - 1].it : dflt; }

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

  // Annotations payload -> checkpoint markers (on val loss, else train loss; trace 2),
  // the val-min star (trace 3), layout shapes + annotations, and the overfitting span count.
  // fx maps an iteration to the x axis; logY: annotation y positions are log10 on a log axis.
  function buildMarks(data, fx, logY) {
    var ck = { x: [], y: [], text: [], color: [], size: [] }, shapes = [], notes = [], spans = 0;
    list(data.checkpoints).forEach(function (c) {
      var it = c && num(c.iteration), val = c && num(c.val_loss), train = c && num(c.train_loss);
      var y = val !== null ? val : train, tags = [c.is_best && "best", c.is_deployment && "deployment"].filter(Boolean);
      if (it === null || y === null) return;
      ck.x.push(fx(it)); ck.y.push(y);
      ck.text.push(["<b>checkpoint @ " + fmtInt(it) + "</b>" + (tags.length ? " (" + tags.join(", ") + ")" : ""),
        "val loss " + fmtLoss(val) + " \u00b7 train loss " + fmtLoss(train),
        fmtInt(num(c.trained_tokens)) + " tokens \u00b7 " + fmtBytes(num(c.size_bytes))]
        .concat(c.note ? ["note: " + esc(String(c.note).slice(0, 60))] : []).join("<br>"));
      ck.color.push(c.is_deployment ? "#7c3aed" : c.is_best ? "#16a34a" : "#475569");
      ck.size.push(tags.length ? 12 : 10);
    });
    list(data.overfitting).forEach(function (s) {
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

  function init(div) {
    var metricsUrl = div.dataset.metricsUrl;
    var eventsUrl = div.dataset.eventsUrl;
    var marksUrl = div.dataset.annotationsUrl;
    var marks = { annotations: [] };     // annotation marks drawn (buildMarks)
    var marksData = null;                // the last annotations payload fetched
    var marksJSON = null;                // the annotations payload drawn (and how), serialized
    var marksBusy = false, marksAgain = false, marksFails = 0;
    var live = div.dataset.live === "true";
    var last = { train: -1, val: -1 };   // highest iteration received per series
    var total = { train: 0, val: 0 };    // points the run has per series (server's count + appended)
    var ov = { train: [], val: [] };     // the overview: downsampled history + live appends
    var det = null;                      // zoomed window: {start, end, train, val, trainEnd, valEnd}
    var drawn = { train: [], val: [] };  // the points in traces 0 and 1 (and the small charts)
    var map = { it: [], tokens: [], time: [] };  // iteration -> tokens / training time, from ov.train
    var ema = { last: 0, n: 0 };         // smoothing state after the last drawn train point
    var thinned = false;                 // the overview is downsampled (zooming fetches detail)
    var annotated = false;               // "waiting" note currently shown?
    var refreshing = false;              // an overview fetch (live refresh) is in flight
    var chain = Promise.resolve();       // Plotly updates, one after the other
    var detailTimer = null, detailSeq = 0, detailFetches = 0;
    var smoothQueued = false;
    var ctl = {
      smoothing: document.getElementById("smoothing"),
      smoothingValue: document.getElementById("smoothing-value"),
      logY: document.getElementById("log-y"),
      xAxis: document.getElementById("x-axis")
    };
    var xMode = ctl.xAxis && X_TITLES[ctl.xAxis.value] ? ctl.xAxis.value : "iteration";
    var logY = !!(ctl.logY && ctl.logY.checked);
    var smalls = SMALL.map(function (s) { return { spec: s, div: document.getElementById(s.id) }; })
      .filter(function (s) { return s.div; });

    if (!metricsUrl || typeof window.Plotly === "undefined") {
      div.textContent = "Chart unavailable (missing metrics URL or Plotly).";
      return;
    }

    function queue(fn) {
      chain = chain.then(fn).catch(function (err) { if (window.console) console.warn("loss chart:", err); });
      return chain;
    }

    function smoothing() {
      var w = ctl.smoothing ? parseFloat(ctl.smoothing.value) : 0.6;
      return isFinite(w) ? Math.min(Math.max(w, 0), 0.99) : 0.6;
    }

    // ---- x axis: iteration, trained tokens or estimated training time -------------------

    function extendMap(p) {
      var n = map.it.length, prevIt = n ? map.it[n - 1] : 0;
      var prevTime = n ? map.time[n - 1] : 0, prevTok = n ? map.tokens[n - 1] : 0;
      map.it.push(p.it);
      map.tokens.push(p.tok !== null ? Math.max(p.tok, prevTok) : prevTok);
      // reports every k steps at s it/s: k / s seconds (evaluation and pauses are not in it)
      map.time.push(prevTime + (p.its ? Math.max(0, p.it - prevIt) / p.its : 0));
    }

    function rebuildMap() {
      map = { it: [], tokens: [], time: [] };
      ov.train.forEach(extendMap);
    }

    // iteration -> x in the current mode (interpolated between the overview's train points)
    function xOf(it) { return xMode === "iteration" ? it : lerp(map.it, map[xMode], it); }
    // x in the current mode -> iteration
    function itOf(x) { return xMode === "iteration" ? x : lerp(map[xMode], map.it, x); }
    function xTrain(p) { return xMode === "tokens" && p.tok !== null ? p.tok : xOf(p.it); }
    function xVal(p) { return xOf(p.it); }

    // ---- what traces 0 / 1 show: the overview, with the zoomed window in detail ----------

    // Highest iteration a detail series covers (start - 1: it covers nothing).
    function coverEnd(kind) { return det[kind + "End"]; }

    function shown(kind) {
      if (!det) return ov[kind].slice();
      var hi = coverEnd(kind), lo = det.start;
      return ov[kind].filter(function (p) { return p.it < lo; })
        .concat(det[kind])
        .concat(ov[kind].filter(function (p) { return p.it > hi; }));
    }

    function emaStep(w) {
      return function (p) {
        if (p.loss === null) return null;
        ema.last = ema.last * w + (1 - w) * p.loss;
        ema.n++;
        return ema.last / (1 - Math.pow(w, ema.n));  // debiased: the start isn't pulled toward 0
      };
    }

    function trainData(p) { return [p.it, p.lr, p.tps, p.its, p.tok, p.mem]; }
    function valData(p) { return [p.it]; }

    // Columns for trace updates; continues the smoothing state from `ema`.
    function columns(t, v) {
      var tx = t.map(xTrain);
      return {
        tx: tx, ty: t.map(function (p) { return p.loss; }), tcd: t.map(trainData), sy: t.map(emaStep(smoothing())),
        vx: v.map(xVal), vy: v.map(function (p) { return p.loss; }), vcd: v.map(valData),
        small: smalls.map(function (s) { return t.map(function (p) { return p[s.spec.key]; }); })
      };
    }

    // Layout annotations: the "waiting" note while empty, plus the annotation marks.
    // On a run that ended without a report (e.g. failed while loading) the note says so.
    function layerNotes() {
      var note = live ? WAITING : Object.assign({}, WAITING, { text: "the run reported no losses" });
      return (annotated ? [Object.assign({}, note)] : []).concat(marks.annotations);
    }

    function markDrawn() {
      div.dataset.trainPoints = String(drawn.train.length);
      div.dataset.valPoints = String(drawn.val.length);
      div.dataset.totalTrain = String(total.train);
      div.dataset.totalVal = String(total.val);
      div.dataset.detail = det ? det.start + "-" + det.end : "false";
      div.dataset.smoothing = String(smoothing());
      div.dataset.logY = String(logY);
      div.dataset.xAxis = xMode;
      div.dataset.drawn = "true";
    }

    // The "waiting" note and hidden tick labels while nothing is drawn.
    function syncEmpty() {
      var empty = drawn.train.length + drawn.val.length === 0;
      if (empty === annotated) return null;
      annotated = empty;
      smalls.forEach(function (s) {
        Plotly.relayout(s.div, { "xaxis.showticklabels": !empty, "yaxis.showticklabels": !empty });
      });
      return Plotly.relayout(div, { annotations: layerNotes(), "xaxis.showticklabels": !empty,
        "yaxis.showticklabels": !empty });
    }

    // Redraw traces 0, 1, 4 and the small charts from scratch (restyle, never newPlot).
    function redraw() {
      drawn = { train: shown("train"), val: shown("val") };
      ema = { last: 0, n: 0 };
      var c = columns(drawn.train, drawn.val);
      return Promise.resolve(Plotly.restyle(div, { x: [c.tx, c.vx, c.tx], y: [c.ty, c.vy, c.sy],
        customdata: [c.tcd, c.vcd, c.tcd] }, [0, 1, 4]))
        .then(function () {
          return Promise.all(smalls.map(function (s, i) {
            return Plotly.restyle(s.div, { x: [c.tx], y: [c.small[i]] }, [0]);
          }));
        })
        .then(syncEmpty)
        .then(markDrawn);
    }

    // Append points newer than everything drawn (extendTraces).
    function extend(t, v) {
      if (det) {  // already drawn from the zoomed window?
        var th = coverEnd("train"), vh = coverEnd("val");
        t = t.filter(function (p) { return p.it > th; });
        v = v.filter(function (p) { return p.it > vh; });
      }
      if (!t.length && !v.length) { markDrawn(); return Promise.resolve(); }
      drawn.train = drawn.train.concat(t);
      drawn.val = drawn.val.concat(v);
      var c = columns(t, v), upd = { x: [], y: [], customdata: [] }, idx = [];
      if (t.length) { upd.x.push(c.tx, c.tx); upd.y.push(c.ty, c.sy); upd.customdata.push(c.tcd, c.tcd); idx.push(0, 4); }
      if (v.length) { upd.x.push(c.vx); upd.y.push(c.vy); upd.customdata.push(c.vcd); idx.push(1); }
      return Promise.resolve(Plotly.extendTraces(div, upd, idx))
        .then(function () {
          if (!t.length) return null;
          return Promise.all(smalls.map(function (s, i) {
            return Plotly.extendTraces(s.div, { x: [c.tx], y: [c.small[i]] }, [0]);
          }));
        })
        .then(syncEmpty)
        .then(markDrawn);
    }

    // ---- data in: the overview (replaces) and live points (appends) ---------------------

    function setOverview(data) {
      var t = fresh(data && data.train, -1).map(trainPoint), v = fresh(data && data.val, -1).map(valPoint);
      var tot = data && data.total;
      ov = { train: t, val: v };
      last = { train: lastIt(t, -1), val: lastIt(v, -1) };
      total = { train: tot && num(tot.train) !== null ? tot.train : t.length,
        val: tot && num(tot.val) !== null ? tot.val : v.length };
      thinned = total.train > t.length || total.val > v.length;
      rebuildMap();
    }

    function addLive(data) {
      var t = fresh(data && data.train, last.train).map(trainPoint);
      var v = fresh(data && data.val, last.val).map(valPoint);
      last = { train: lastIt(t, last.train), val: lastIt(v, last.val) };
      total.train += t.length;
      total.val += v.length;
      ov.train = ov.train.concat(t);
      ov.val = ov.val.concat(v);
      t.forEach(extendMap);
      return extend(t, v);
    }

    function url(params) {
      var u = new URL(metricsUrl, window.location.href);
      Object.keys(params).forEach(function (k) { u.searchParams.set(k, String(params[k])); });
      return u.toString();
    }

    // An overview (downsampled history) replaces what is drawn; points appended meanwhile that
    // are newer than it are kept, since the stream will not send them again.
    function takeOverview(data) {
      return queue(function () {
        var kept = { train: ov.train, val: ov.val };
        setOverview(data);
        var t = kept.train.filter(function (p) { return p.it > last.train; });
        var v = kept.val.filter(function (p) { return p.it > last.val; });
        ov.train = ov.train.concat(t);
        ov.val = ov.val.concat(v);
        total.train += t.length;
        total.val += v.length;
        last = { train: lastIt(ov.train, -1), val: lastIt(ov.val, -1) };
        t.forEach(extendMap);
        return redraw();
      });
    }

    // Live appends made the overview big: fetch it again, downsampled.
    function refreshOverview() {
      if (refreshing || ov.train.length <= REFRESH_AT && ov.val.length <= REFRESH_AT) return;
      refreshing = true;
      getJSON(url({ max_points: MAX_POINTS })).then(takeOverview, function (err) {
        if (window.console) console.warn("loss chart: overview refresh will retry:", err);
      }).finally(function () { refreshing = false; });
    }

    // Points pushed by the stream: appended (the iteration check drops anything already drawn).
    function takeLive(data) {
      return queue(function () { return addLive(data); }).then(refreshOverview);
    }

    // ---- zoom: fetch the visible iteration window in detail ---------------------------

    // The small charts show the loss chart's x range (its zoom, and its autorange padding).
    function syncSmallRange() {
      var xa = div._fullLayout && div._fullLayout.xaxis;
      if (!xa || !Array.isArray(xa.range)) return;
      var r = xa.range.slice();
      smalls.forEach(function (s) {
        var sx = s.div._fullLayout && s.div._fullLayout.xaxis;
        if (!sx || sx.range[0] !== r[0] || sx.range[1] !== r[1] || sx.ticksuffix !== X_SUFFIX[xMode]) {
          Plotly.relayout(s.div, { "xaxis.range": r, "xaxis.hoverformat": X_HOVER[xMode], "xaxis.ticksuffix": X_SUFFIX[xMode] });
        }
      });
    }

    function loadDetail(range) {
      var seq = ++detailSeq;
      if (!range) {
        if (!det) return;
        queue(function () { det = null; return redraw(); });
        return;
      }
      var a = itOf(Math.min(range[0], range[1])), b = itOf(Math.max(range[0], range[1]));
      var start = Math.max(0, Math.floor(a)), end = Math.ceil(b);
      if (!thinned) {  // everything is drawn already
        if (det) queue(function () { det = null; return redraw(); });
        return;
      }
      if (det && det.start === start && det.end === end) return;
      detailFetches++;
      div.dataset.detailFetches = String(detailFetches);
      getJSON(url({ start: start, end: end, max_points: MAX_POINTS })).then(function (data) {
        if (seq !== detailSeq) return null;  // zoomed again meanwhile
        var t = fresh(data && data.train, start - 1).filter(function (p) { return p.iteration <= end; }).map(trainPoint);
        var v = fresh(data && data.val, start - 1).filter(function (p) { return p.iteration <= end; }).map(valPoint);
        return queue(function () {
          if (seq !== detailSeq) return null;
          det = { start: start, end: end, train: t, val: v, trainEnd: lastIt(t, start - 1), valEnd: lastIt(v, start - 1) };
          return redraw();
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
      clearTimeout(detailTimer);
      detailTimer = setTimeout(function () { loadDetail(range); }, range ? DETAIL_DELAY_MS : 0);
    }

    // ---- controls -------------------------------------------------------------------------

    function showSmoothing() {
      if (ctl.smoothingValue) ctl.smoothingValue.textContent = smoothing().toFixed(2);
    }

    function onSmoothing() {
      showSmoothing();
      if (smoothQueued) return;
      smoothQueued = true;
      queue(function () {
        smoothQueued = false;
        ema = { last: 0, n: 0 };
        var sy = drawn.train.map(emaStep(smoothing()));
        return Promise.resolve(Plotly.restyle(div, { y: [sy] }, [4])).then(markDrawn);
      });
    }

    function onLogY() {
      logY = !!ctl.logY.checked;
      queue(function () {
        return Promise.resolve(Plotly.relayout(div, { "yaxis.type": logY ? "log" : "linear", "yaxis.autorange": true }))
          .then(function () { return applyMarks(marksData, true); })
          .then(markDrawn);
      });
    }

    function onXAxis() {
      var mode = X_TITLES[ctl.xAxis.value] ? ctl.xAxis.value : "iteration";
      queue(function () {
        if (mode === xMode) return null;
        var xa = div._fullLayout && div._fullLayout.xaxis, range = null;
        if (xa && !xa.autorange && Array.isArray(xa.range)) {  // keep the zoomed stretch of training
          var its = xa.range.map(Number).map(itOf);  // in the old mode
          xMode = mode;
          range = its.map(xOf);
        }
        xMode = mode;
        var lay = { "xaxis.title.text": X_TITLES[mode], "xaxis.hoverformat": X_HOVER[mode], "xaxis.ticksuffix": X_SUFFIX[mode] };
        if (range) lay["xaxis.range"] = range; else lay["xaxis.autorange"] = true;
        return redraw()
          .then(function () { return Plotly.relayout(div, lay); })
          .then(function () { return applyMarks(marksData, true); })
          .then(markDrawn);
      });
    }

    // ---- annotations ------------------------------------------------------------------------

    // Draw an annotations payload (only when it, or the axes it is placed on, changed).
    function applyMarks(data, force) {
      if (!data || typeof data !== "object") return null;
      var text = JSON.stringify(data) + "|" + xMode + "|" + logY;
      if (text === marksJSON && !force) return null;
      var m = marks = buildMarks(data, xOf, logY);
      return Promise.resolve(Plotly.restyle(div, { x: [m.ck.x, m.star.x], y: [m.ck.y, m.star.y], text: [m.ck.text, []],
        "marker.color": [m.ck.color, STAR_COLOR], "marker.size": [m.ck.size, 20] }, [2, 3]))
        .then(function () { return Plotly.relayout(div, { shapes: m.shapes, annotations: layerNotes() }); })
        .then(function () {
          marksJSON = text;
          div.dataset.checkpointMarkers = String(m.ck.x.length);
          div.dataset.overfittingSpans = String(m.spans);
        });
    }

    // Fetch annotations; a failure is retried on the next poll (on an ended run's page,
    // up to 5 times on its own). A call while one is in flight runs again after it.
    function refreshMarks() {
      if (!marksUrl) return;
      if (marksBusy) { marksAgain = true; return; }
      marksBusy = true;
      marksAgain = false;
      getJSON(marksUrl).then(function (data) {
        marksData = data;
        return queue(function () { return applyMarks(data); });
      }).then(function () { marksFails = 0; }, function (err) {
        marksFails++;
        if (window.console) console.warn("loss chart: annotations will retry:", err);
      }).finally(function () {
        marksBusy = false;
        if (marksAgain) refreshMarks();
        else if (marksFails && marksFails < 5 && !live) setTimeout(refreshMarks, MARKS_MS);
      });
    }

    function pollMarks() {
      refreshMarks();
      if (live) setTimeout(pollMarks, MARKS_MS);
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

    // ---- drawing ------------------------------------------------------------------------------

    function smallLayout(s) {
      return {
        title: { text: s.title, font: { size: 12, color: "#334155" }, x: 0.01, xanchor: "left", y: 0.97, yanchor: "top" },
        xaxis: { zeroline: false, fixedrange: true, hoverformat: X_HOVER[xMode], ticksuffix: X_SUFFIX[xMode],
          tickfont: { size: 10 }, showticklabels: !annotated },
        yaxis: { zeroline: false, fixedrange: true, tickfont: { size: 10 }, tickformat: s.tickformat, automargin: true,
          rangemode: "tozero",  // a constant learning rate would otherwise get a meaningless ±1 range
          showticklabels: !annotated },
        hovermode: "x", showlegend: false, height: 180,
        margin: { l: 50, r: 12, t: 26, b: 28 },
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff"
      };
    }

    // First (and only) newPlot of each chart; `data` may be null if the first fetch failed.
    function firstDraw(data) {
      setOverview(data || {});
      drawn = { train: shown("train"), val: shown("val") };
      ema = { last: 0, n: 0 };
      var c = columns(drawn.train, drawn.val);
      annotated = drawn.train.length + drawn.val.length === 0;
      var traces = [
        { name: "train loss", type: "scatter", mode: "lines", x: c.tx, y: c.ty, customdata: c.tcd,
          line: { color: TRAIN_COLOR, width: 1 }, opacity: 0.3, hovertemplate: TRAIN_HOVER, legendrank: 2 },
        { name: "validation loss", type: "scatter", mode: "lines+markers", x: c.vx, y: c.vy, customdata: c.vcd,
          line: { color: "#ea580c", width: 2 }, marker: { size: 6 }, hovertemplate: VAL_HOVER, legendrank: 3 },
        { name: "checkpoints", type: "scatter", mode: "markers", x: [], y: [], text: [],
          marker: { symbol: "diamond", size: 9, color: "#475569", line: { color: "#ffffff", width: 1 } },
          hoverinfo: "skip", legendrank: 4 },  // see onPointer
        { name: "validation minimum", type: "scatter", mode: "markers", x: [], y: [], showlegend: false,
          hoverinfo: "skip", marker: { symbol: "star-open", size: 20, color: STAR_COLOR, line: { width: 2 } } },
        { name: "train loss (smoothed)", type: "scatter", mode: "lines", x: c.tx, y: c.sy, customdata: c.tcd,
          line: { color: TRAIN_COLOR, width: 2 }, hovertemplate: SMOOTH_HOVER, legendrank: 1 }
      ];
      var layout = {
        // tick labels are hidden while empty (the default 0..6 / -1..4 ranges mean nothing)
        xaxis: { title: { text: X_TITLES[xMode] }, rangemode: "tozero", zeroline: false, showticklabels: !annotated,
          hoverformat: X_HOVER[xMode], ticksuffix: X_SUFFIX[xMode] },
        yaxis: { title: { text: "loss" }, zeroline: false, showticklabels: !annotated, type: logY ? "log" : "linear" },
        hovermode: "x unified",
        hoverdistance: -1,               // always show the nearest point of each trace
        hoverlabel: { namelength: -1 },  // don't truncate "validation loss"
        margin: { l: 60, r: 20, t: 30, b: 50 },
        legend: { orientation: "h", x: 0, y: 1.12 },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#ffffff",
        uirevision: "keep",  // keep the user's zoom across updates
        annotations: layerNotes()
      };
      var config = { responsive: true, displaylogo: false, displayModeBar: "hover", showTips: false,
        modeBarButtons: [["zoom2d", "pan2d", "resetScale2d", "toImage"]] };
      return Promise.resolve(Plotly.newPlot(div, traces, layout, config))
        .then(function () {
          return Promise.all(smalls.map(function (s, i) {
            return Plotly.newPlot(s.div, [{ type: "scatter", mode: "lines", x: c.tx, y: c.small[i], name: s.spec.title,
              line: { color: s.spec.color, width: 1.5 }, hovertemplate: s.spec.hover + "<extra></extra>" }],
            smallLayout(s.spec), { responsive: true, displaylogo: false, displayModeBar: false });
          }));
        })
        .then(markDrawn);
    }

    // The run has ended and every point is drawn (called through the queue, after the last append).
    function finish(end) {
      live = false;
      div.dataset.live = "false";
      refreshMarks();  // one last look: the early stop / final checkpoint
      if (annotated) queue(function () { return Plotly.relayout(div, { annotations: layerNotes() }); });
      div.dispatchEvent(new CustomEvent("loraboard-run-ended", { bubbles: true,
        detail: { status: end && end.status, end: end } }));
    }

    // Live: points, the state and the end come from the run's event stream, starting after what is drawn.
    function listen() {
      if (!eventsUrl || !window.LoraboardLive) {
        div.dataset.streamState = "closed";
        if (window.console) console.error("loss chart: no event stream (missing data-events-url or run_live.js)");
        return;
      }
      window.LoraboardLive.openStream(div, eventsUrl, { train: last.train, val: last.val }, {
        metrics: takeLive,
        end: function (end) { queue(function () { finish(end); }); }
      });
    }

    // The first fetch failed: draw empty now, fetch the overview until it comes, then go live.
    function retryFirst() {
      setTimeout(function () {
        getJSON(url({ max_points: MAX_POINTS })).then(function (data) {
          return takeOverview(data).then(function () { if (live) listen(); });
        }, function (err) {
          if (window.console) console.warn("loss chart: first fetch will retry:", err);
          retryFirst();
        });
      }, RETRY_MS);
    }

    showSmoothing();
    // The page started this request before Plotly loaded (window.loraboardFirstMetrics) when it could.
    var first = window.loraboardFirstMetrics || getJSON(url({ max_points: MAX_POINTS }));
    var firstFailed = false;
    window.loraboardFirstMetrics = null;
    div.dataset.streamState = live ? "connecting" : "closed";
    first
      .catch(function (err) {
        if (window.console) console.warn("loss chart: initial fetch failed:", err);
        firstFailed = true;
        return null;
      })
      .then(function (data) { return queue(function () { return firstDraw(data); }); })
      .then(function () {
        div.addEventListener("mousemove", onPointer, true);  // before Plotly's own hover
        div.on("plotly_relayout", onRelayout);
        div.on("plotly_afterplot", syncSmallRange);
        syncSmallRange();
        if (ctl.smoothing) ctl.smoothing.addEventListener("input", onSmoothing);
        if (ctl.logY) ctl.logY.addEventListener("change", onLogY);
        if (ctl.xAxis) ctl.xAxis.addEventListener("change", onXAxis);
        pollMarks();
        if (firstFailed) retryFirst();
        else if (live) listen();
      })
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
