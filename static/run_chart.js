/* Live loss chart for a run page, with TensorBoard-like controls; this file holds its state, data
 * flow and drawing, and starts it. Its parts, loaded before it (see templates/run.html):
 * static/chart_common.js (shared helpers, window.loraboardChart), run_live.js (the event stream),
 * run_chart_marks.js (annotation marks), run_chart_small.js (small metric charts),
 * run_chart_detail.js (zoom detail) and run_evaluation.js (evaluated losses, the task chart). Each part gets the shared state object `chart` below.
 *
 * Markup: <div id="loss-chart" data-metrics-url="/api/runs/7/metrics" data-events-url="/api/runs/7/events"
 *              data-annotations-url="/api/runs/7/annotations" data-live="true"></div>
 * Optional controls (found by id anywhere on the page): #smoothing (range 0..0.99) with
 * #smoothing-value (its shown value), #log-y (checkbox), #x-axis (select: iteration | tokens |
 * time), and the small charts #chart-lr, #chart-tps, #chart-its, #chart-mem.
 *
 * Draws once with Plotly.newPlot, then (if live) listens to the run's event stream (server-sent
 * events, see run_live.js) and appends the points it pushes with Plotly.extendTraces;
 * data-stream-state says how the stream is (connecting / open / reconnecting / closed).
 * Traces: 0 raw train loss (faint), 1 validation loss, 2 checkpoints, 3 validation minimum,
 * 4 train loss smoothed (EMA, debiased like TensorBoard; recomputed from trace 0's points),
 * 5 the evaluated split's loss per checkpoint (run_evaluation.js; data-evaluations-url).
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

  var C = window.loraboardChart;
  var RETRY_MS = 2000;                // a failed first fetch is tried again after this long
  var MAX_POINTS = 2000;              // per series, for the overview and for a zoomed window
  var REFRESH_AT = 3 * MAX_POINTS;    // overview grown this big by live appends: fetch it again, downsampled
  var TRAIN_HOVER = "%{y:.4f} (iter %{customdata[0]:,d})" +
    "<br>learning rate %{customdata[1]:.3~e}" +
    "<br>tokens/s %{customdata[2]:,.0f} \u00b7 it/s %{customdata[3]:.3~f}" +
    "<br>trained tokens %{customdata[4]:,d}" +
    "<br>peak memory %{customdata[5]:.2f} GB";
  var SMOOTH_HOVER = "%{y:.4f}";
  var VAL_HOVER = "%{y:.4f} (iter %{customdata[0]:,d})";  // traces have different x values: show each one's
  var TRAIN_COLOR = "#2563eb";
  var fresh = C.fresh, trainPoint = C.trainPoint, valPoint = C.valPoint, lastIt = C.lastIt, num = C.num;

  function init(div) {
    var metricsUrl = div.dataset.metricsUrl;
    var eventsUrl = div.dataset.eventsUrl;
    var ctl = {
      smoothing: document.getElementById("smoothing"),
      smoothingValue: document.getElementById("smoothing-value"),
      logY: document.getElementById("log-y"),
      xAxis: document.getElementById("x-axis")
    };
    // State the chart's parts read (see run_chart_marks.js, run_chart_small.js, run_chart_detail.js).
    var chart = {
      div: div,
      live: div.dataset.live === "true",
      xMode: C.xModeOf(ctl.xAxis),
      logY: !!(ctl.logY && ctl.logY.checked),
      annotated: false,                // "waiting" note currently shown?
      ov: { train: [], val: [] },      // the overview: downsampled history + live appends
      thinned: false,                  // the overview is downsampled (zooming fetches detail)
      maxPoints: MAX_POINTS,
      xOf: xOf, itOf: itOf, url: url, queue: queue, redraw: redraw
    };
    var last = { train: -1, val: -1 };   // highest iteration received per series
    var total = { train: 0, val: 0 };    // points the run has per series (server's count + appended)
    var drawn = { train: [], val: [] };  // the points in traces 0 and 1 (and the small charts)
    var map = C.axisMap();               // iteration -> tokens / training time, from chart.ov.train
    var ema = C.emaState();              // smoothing state after the last drawn train point
    var refreshing = false;              // an overview fetch (live refresh) is in flight
    var chain = Promise.resolve();       // Plotly updates, one after the other
    var smoothQueued = false;

    if (!metricsUrl || typeof window.Plotly === "undefined") {
      div.textContent = "Chart unavailable (missing metrics URL or Plotly).";
      return;
    }
    var marks = C.runMarks(chart), smalls = C.smallCharts(chart), detail = C.zoomDetail(chart), evals = C.evaluationCurve(chart);
    var yRange = null;  // made after the first newPlot (it listens to the plot's relayout events)
    function fitY() { return yRange ? yRange.fit(drawn.train, drawn.val) : null; }

    function queue(fn) {
      chain = chain.then(fn).catch(function (err) { if (window.console) console.warn("loss chart:", err); });
      return chain;
    }

    function smoothing() { return C.smoothingOf(ctl.smoothing); }

    // ---- x axis: iteration, trained tokens or estimated training time -------------------

    function rebuildMap() { map = C.axisMapOf(chart.ov.train); }
    function extendMap(p) { C.extendAxisMap(map, p); }

    // iteration -> x in the current mode (interpolated between the overview's train points)
    function xOf(it) { return C.xOfIt(map, chart.xMode, it); }
    // x in the current mode -> iteration
    function itOf(x) { return C.itOfX(map, chart.xMode, x); }
    function xTrain(p) { return C.trainX(map, chart.xMode, p); }
    function xVal(p) { return xOf(p.it); }

    // ---- what traces 0 / 1 show: the overview, with the zoomed window in detail ----------

    function emaStep(w) {
      var step = C.emaStep(ema, w);
      return function (p) { return step(p.loss); };
    }

    function trainData(p) { return [p.it, p.lr, p.tps, p.its, p.tok, p.mem]; }
    function valData(p) { return [p.it]; }
    function loss(p) { return p.loss; }

    // Columns for trace updates; continues the smoothing state from `ema`.
    function columns(t, v) {
      return {
        tx: t.map(xTrain), ty: t.map(loss), tcd: t.map(trainData), sy: t.map(emaStep(smoothing())),
        vx: v.map(xVal), vy: v.map(loss), vcd: v.map(valData), small: smalls.columns(t)
      };
    }

    function markDrawn() {
      div.dataset.trainPoints = String(drawn.train.length);
      div.dataset.valPoints = String(drawn.val.length);
      div.dataset.totalTrain = String(total.train);
      div.dataset.totalVal = String(total.val);
      div.dataset.detail = detail.label();
      div.dataset.smoothing = String(smoothing());
      div.dataset.logY = String(chart.logY);
      div.dataset.xAxis = chart.xMode;
      div.dataset.drawn = "true";
    }

    // The "waiting" note and hidden tick labels while nothing is drawn.
    function syncEmpty() {
      var empty = drawn.train.length + drawn.val.length === 0;
      if (empty === chart.annotated) return null;
      chart.annotated = empty;
      smalls.showTicks(!empty);
      return Plotly.relayout(div, { annotations: marks.notes(), "xaxis.showticklabels": !empty,
        "yaxis.showticklabels": !empty });
    }

    // Redraw traces 0, 1, 4 and the small charts from scratch (restyle, never newPlot).
    function redraw() {
      drawn = { train: detail.shown("train"), val: detail.shown("val") };
      ema = C.emaState();
      var c = columns(drawn.train, drawn.val);
      return Promise.resolve(Plotly.restyle(div, { x: [c.tx, c.vx, c.tx], y: [c.ty, c.vy, c.sy],
        customdata: [c.tcd, c.vcd, c.tcd] }, [0, 1, 4]))
        .then(function () { return smalls.restyle(c.tx, c.small); })
        .then(syncEmpty)
        .then(fitY)
        .then(markDrawn);
    }

    // Append points newer than everything drawn (extendTraces).
    function extend(t, v) {
      var th = detail.coverEnd("train"), vh = detail.coverEnd("val");
      if (th !== null) {  // already drawn from the zoomed window?
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
        .then(function () { return t.length ? smalls.extend(c.tx, c.small) : null; })
        .then(syncEmpty)
        .then(fitY)
        .then(markDrawn)
        .then(function () { if (v.length) marks.refresh(); });  // a new validation may move the val-min mark
    }

    // ---- data in: the overview (replaces) and live points (appends) ---------------------

    function setOverview(data) {
      var t = fresh(data && data.train, -1).map(trainPoint), v = fresh(data && data.val, -1).map(valPoint);
      var tot = data && data.total;
      chart.ov = { train: t, val: v };
      last = { train: lastIt(t, -1), val: lastIt(v, -1) };
      total = { train: tot && num(tot.train) !== null ? tot.train : t.length,
        val: tot && num(tot.val) !== null ? tot.val : v.length };
      chart.thinned = total.train > t.length || total.val > v.length;
      rebuildMap();
    }

    function addLive(data) {
      var t = fresh(data && data.train, last.train).map(trainPoint);
      var v = fresh(data && data.val, last.val).map(valPoint);
      last = { train: lastIt(t, last.train), val: lastIt(v, last.val) };
      total.train += t.length;
      total.val += v.length;
      chart.ov.train = chart.ov.train.concat(t);
      chart.ov.val = chart.ov.val.concat(v);
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
        var kept = { train: chart.ov.train, val: chart.ov.val };
        setOverview(data);
        var t = kept.train.filter(function (p) { return p.it > last.train; });
        var v = kept.val.filter(function (p) { return p.it > last.val; });
        chart.ov.train = chart.ov.train.concat(t);
        chart.ov.val = chart.ov.val.concat(v);
        total.train += t.length;
        total.val += v.length;
        last = { train: lastIt(chart.ov.train, -1), val: lastIt(chart.ov.val, -1) };
        t.forEach(extendMap);
        return redraw();
      });
    }

    // Live appends made the overview big: fetch it again, downsampled.
    function refreshOverview() {
      if (refreshing || chart.ov.train.length <= REFRESH_AT && chart.ov.val.length <= REFRESH_AT) return;
      refreshing = true;
      C.getJSON(url({ max_points: MAX_POINTS })).then(takeOverview, function (err) {
        if (window.console) console.warn("loss chart: overview refresh will retry:", err);
      }).finally(function () { refreshing = false; });
    }

    // Points pushed by the stream: appended (the iteration check drops anything already drawn).
    function takeLive(data) {
      return queue(function () { return addLive(data); }).then(refreshOverview);
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
        ema = C.emaState();
        var sy = drawn.train.map(emaStep(smoothing()));
        return Promise.resolve(Plotly.restyle(div, { y: [sy] }, [4])).then(markDrawn);
      });
    }

    function onLogY() {
      chart.logY = !!ctl.logY.checked;
      queue(function () {
        if (yRange) yRange.refit();
        return Promise.resolve(Plotly.relayout(div, { "yaxis.type": chart.logY ? "log" : "linear", "yaxis.autorange": true }))
          .then(fitY)
          .then(marks.redraw)
          .then(markDrawn);
      });
    }

    function onXAxis() {
      var mode = C.xModeOf(ctl.xAxis);
      queue(function () {
        if (mode === chart.xMode) return null;
        var xa = div._fullLayout && div._fullLayout.xaxis, range = null;
        if (xa && !xa.autorange && Array.isArray(xa.range)) {  // keep the zoomed stretch of training
          var its = xa.range.map(Number).map(itOf);  // in the old mode
          chart.xMode = mode;
          range = its.map(xOf);
        }
        chart.xMode = mode;
        var lay = C.xAxisUpdate(mode);
        if (range) lay["xaxis.range"] = range; else lay["xaxis.autorange"] = true;
        return redraw()
          .then(function () { return Plotly.relayout(div, lay); })
          .then(marks.redraw)
          .then(evals.redraw)
          .then(markDrawn);
      });
    }

    // ---- drawing ------------------------------------------------------------------------------

    // First (and only) newPlot of each chart; `data` may be null if the first fetch failed.
    function firstDraw(data) {
      setOverview(data || {});
      drawn = { train: detail.shown("train"), val: detail.shown("val") };
      ema = C.emaState();
      var c = columns(drawn.train, drawn.val);
      chart.annotated = drawn.train.length + drawn.val.length === 0;
      var traces = [
        { name: "train loss", type: "scatter", mode: "lines", x: c.tx, y: c.ty, customdata: c.tcd,
          line: { color: TRAIN_COLOR, width: 1 }, opacity: 0.3, hovertemplate: TRAIN_HOVER, legendrank: 2 },
        { name: "validation loss", type: "scatter", mode: "lines+markers", x: c.vx, y: c.vy, customdata: c.vcd,
          line: { color: "#ea580c", width: 2 }, marker: { size: 6 }, hovertemplate: VAL_HOVER, legendrank: 3 }
      ].concat(marks.traces(), [
        { name: "train loss (smoothed)", type: "scatter", mode: "lines", x: c.tx, y: c.sy, customdata: c.tcd,
          line: { color: TRAIN_COLOR, width: 2 }, hovertemplate: SMOOTH_HOVER, legendrank: 1 }
      ], evals.traces());
      var layout = {
        xaxis: C.lossXAxis(chart.xMode, chart.annotated),
        yaxis: C.lossYAxis(chart.logY, chart.annotated),
        hovermode: "x unified",
        hoverdistance: -1,               // always show the nearest point of each trace
        hoverlabel: { namelength: -1 },  // don't truncate "validation loss"
        margin: { l: 60, r: 20, t: 30, b: 50 },
        legend: { orientation: "h", x: 0, y: 1.12 },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#ffffff",
        uirevision: "keep",  // keep the user's zoom across updates
        annotations: marks.notes()
      };
      var config = { responsive: true, displaylogo: false, displayModeBar: "hover", showTips: false,
        modeBarButtons: C.MODEBAR_BUTTONS };
      return Promise.resolve(Plotly.newPlot(div, traces, layout, config))
        .then(function () { return smalls.draw(c.tx, c.small); })
        .then(function () { yRange = C.yRange(chart); return fitY(); })
        .then(markDrawn);
    }

    // The run has ended and every point is drawn (called through the queue, after the last append).
    function finish(end) {
      chart.live = false;
      div.dataset.live = "false";
      marks.refresh();  // one last look: the early stop / final checkpoint
      if (chart.annotated) queue(function () { return Plotly.relayout(div, { annotations: marks.notes() }); });
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
        C.getJSON(url({ max_points: MAX_POINTS })).then(function (data) {
          return takeOverview(data).then(function () { if (chart.live) listen(); });
        }, function (err) {
          if (window.console) console.warn("loss chart: first fetch will retry:", err);
          retryFirst();
        });
      }, RETRY_MS);
    }

    showSmoothing();
    // The page started this request before Plotly loaded (window.loraboardFirstMetrics) when it could.
    var first = window.loraboardFirstMetrics || C.getJSON(url({ max_points: MAX_POINTS }));
    var firstFailed = false;
    window.loraboardFirstMetrics = null;
    div.dataset.streamState = chart.live ? "connecting" : "closed";
    first
      .catch(function (err) {
        if (window.console) console.warn("loss chart: initial fetch failed:", err);
        firstFailed = true;
        return null;
      })
      .then(function (data) { return queue(function () { return firstDraw(data); }); })
      .then(function () {
        div.addEventListener("mousemove", marks.onPointer, true);  // before Plotly's own hover
        div.on("plotly_relayout", detail.onRelayout);
        div.on("plotly_afterplot", smalls.syncRange);
        smalls.syncRange();
        if (ctl.smoothing) ctl.smoothing.addEventListener("input", onSmoothing);
        if (ctl.logY) ctl.logY.addEventListener("change", onLogY);
        if (ctl.xAxis) ctl.xAxis.addEventListener("change", onXAxis);
        marks.poll(); evals.refresh();
        if (firstFailed) retryFirst();
        else if (chart.live) listen();
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
