/* Live loss chart for a run page.
 *
 * Markup: <div id="loss-chart" data-metrics-url="/api/runs/7/metrics" data-run-url="/api/runs/7"
 *              data-annotations-url="/api/runs/7/annotations" data-live="true"></div>
 * Needs Plotly loaded before this script. Draws once with Plotly.newPlot, then
 * (if live) polls every second and appends new points with Plotly.extendTraces.
 * After each draw it sets data-train-points / data-val-points (points drawn)
 * and data-drawn="true"; when the run ends it sets data-live="false" and fires
 * a bubbling "loraboard-run-ended" event (detail: {status}).
 * Annotations (optional data-annotations-url) are fetched at start, every 3 s while
 * live and once after the run ends: trace 2 marks checkpoints, trace 3 the validation
 * minimum; layout shapes/annotations show the early stop and overfitting spans.
 * After each update it sets data-checkpoint-markers / data-overfitting-spans (counts).
 */
(function () {
  "use strict";

  var POLL_MS = 500;
  var MARKS_MS = 3000;
  var FETCH_TIMEOUT_MS = 10000;
  var TERMINAL = ["completed", "stopped", "early_stopped", "failed", "interrupted"];
  var WAITING = { text: "waiting for the first report\u2026", xref: "paper", yref: "paper", x: 0.5, y: 0.5,
    showarrow: false, font: { size: 14, color: "#64748b" } };
  var HOVER = "%{y:.4f} (iter %{x})";  // traces have different x values: show each one's
  var CK_HOVER = "%{text}<extra></extra>";
  var STAR_COLOR = "#ca8a04";

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

  // Annotations payload -> checkpoint markers (on val loss, else train loss; trace 2),
  // the val-min star (trace 3), layout shapes + annotations, and the overfitting span count.
  function buildMarks(data) {
    var ck = { x: [], y: [], text: [], color: [], size: [] }, shapes = [], notes = [], spans = 0;
    list(data.checkpoints).forEach(function (c) {
      var it = c && num(c.iteration), val = c && num(c.val_loss), train = c && num(c.train_loss);
      var y = val !== null ? val : train, tags = [c.is_best && "best", c.is_deployment && "deployment"].filter(Boolean);
      if (it === null || y === null) return;
      ck.x.push(it); ck.y.push(y);
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
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: s[0], x1: s[1], y0: 0, y1: 1, layer: "below",
        fillcolor: "rgba(220, 38, 38, 0.08)", line: { width: 0 } });
      // an annotation rather than a shape label: its background keeps it legible over the early-stop line
      notes.push({ text: "overfitting", x: s[0], y: 1, xref: "x", yref: "paper", xanchor: "left", yanchor: "top",
        showarrow: false, font: { size: 11, color: "#b91c1c" }, bgcolor: "rgba(254, 242, 242, 0.9)" });
    });
    var stop = data.early_stop || {}, at = num(stop.iteration);
    if (at !== null) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: at, x1: at, y0: 0, y1: 1,
        line: { color: "#b91c1c", width: 1.5, dash: "dash" } });
      notes.push({ text: "early stop", hovertext: esc(stop.reason || "early stop") + " (iter " + fmtInt(at) + ")",
        x: at, y: 0.5, xref: "x", yref: "paper", textangle: -90, xanchor: "right", showarrow: false,
        font: { size: 11, color: "#b91c1c" }, bgcolor: "rgba(255,255,255,0.85)" });
    }
    var vmin = data.val_min || {}, vx = num(vmin.iteration), vy = num(vmin.val_loss), star = vx !== null && vy !== null;
    if (star) {
      notes.push({ text: "val min " + fmtLoss(vy) + " @ " + fmtInt(vx), x: vx, y: vy, xref: "x", yref: "y",
        showarrow: true, arrowhead: 0, arrowcolor: "#a16207", ax: 0, ay: -30, font: { size: 11, color: "#713f12" },
        bgcolor: "rgba(255,255,255,0.9)", bordercolor: "#eab308", borderpad: 2 });
    }
    return { ck: ck, star: { x: star ? [vx] : [], y: star ? [vy] : [] }, shapes: shapes, annotations: notes, spans: spans };
  }

  function init(div) {
    var metricsUrl = div.dataset.metricsUrl;
    var runUrl = div.dataset.runUrl;
    var marksUrl = div.dataset.annotationsUrl;
    var marks = { annotations: [] };     // annotation marks drawn (buildMarks)
    var marksJSON = null;                // the annotations payload drawn, serialized
    var marksBusy = false, marksAgain = false, marksFails = 0;
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

    // Layout annotations: the "waiting" note while empty, plus the annotation marks.
    function layerNotes() { return (annotated ? [Object.assign({}, WAITING)] : []).concat(marks.annotations); }

    // Draw an annotations payload (only when it differs from the one drawn).
    function applyMarks(data) {
      var text = JSON.stringify(data);
      if (text === marksJSON || !data || typeof data !== "object") return null;
      var m = marks = buildMarks(data);
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
      getJSON(marksUrl).then(applyMarks).then(function () { marksFails = 0; }, function (err) {
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
        var dx = ox + fl.xaxis.l2p(t.x[i]) - e.clientX, dy = oy + fl.yaxis.l2p(t.y[i]) - e.clientY;
        near = dx * dx + dy * dy <= 14 * 14;
      }
      if (near === (t.hoverinfo !== "skip")) return;
      Plotly.restyle(div, near ? { hoverinfo: "all", hovertemplate: CK_HOVER } : { hoverinfo: "skip", hovertemplate: null }, [2]);
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
          line: { color: "#ea580c", width: 2 }, marker: { size: 6 }, hovertemplate: HOVER },
        { name: "checkpoints", type: "scatter", mode: "markers", x: [], y: [], text: [],
          marker: { symbol: "diamond", size: 9, color: "#475569", line: { color: "#ffffff", width: 1 } },
          hoverinfo: "skip" },  // see onPointer
        { name: "validation minimum", type: "scatter", mode: "markers", x: [], y: [], showlegend: false,
          hoverinfo: "skip", marker: { symbol: "star-open", size: 20, color: STAR_COLOR, line: { width: 2 } } }
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
        annotations: layerNotes()
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
          return Plotly.relayout(div, { annotations: layerNotes(), "xaxis.showticklabels": true, "yaxis.showticklabels": true });
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
      refreshMarks();  // one last look: the early stop / final checkpoint
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
      .then(function () {
        div.addEventListener("mousemove", onPointer, true);  // before Plotly's own hover
        pollMarks();
        if (live) setTimeout(tick, POLL_MS);
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
