/* A run page's live side: the run's event stream, the tab title, and "notify me when it ends".
 *
 * LoraboardLive.openStream(div, url, cursor, handlers) listens to /api/runs/<id>/events
 * (server-sent events): `metrics` events go to handlers.metrics({train, val}), `status` events are
 * re-fired on div as a bubbling "loraboard-run-status" event (detail: {status, iteration,
 * total_iters, train_loss}), the `end` event goes to handlers.end(data) and closes the stream.
 * The first connection starts after `cursor` ({train, val}: the last iterations already drawn);
 * the browser resumes a dropped stream by itself (Last-Event-ID), and when it gives up, a new
 * stream starts from the last event id received. div.dataset.streamState says connecting / open /
 * reconnecting / closed, and #stream-hint is shown while the stream is down.
 *
 * On DOMContentLoaded it keeps document.title as "<glyph> <state> <train loss> · <run name> · loraboard"
 * (glyphs from the chart's data-status-glyphs) and wires #notify-button: a run watched live that
 * ends shows a browser Notification (run name, state, best/last loss) when permission is granted.
 * Needs static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var RETRY_MS = 1000;       // a stream the browser gave up on is opened again after this long
  var MAX_RETRY_MS = 10000;  // ... doubling up to this
  var ID = /^(-?\d+):(-?\d+)$/;

  var num = window.loraboardChart.num;
  function word(status) { return String(status || "").replace(/_/g, " "); }

  function parse(e) {
    try { return JSON.parse(e.data); } catch (err) { return null; }
  }

  function openStream(div, url, cursor, handlers) {
    var at = { train: cursor.train, val: cursor.val };  // the last event id received
    var source = null, done = false, timer = null, delay = RETRY_MS;
    var hint = document.getElementById("stream-hint");

    function setState(state) {
      div.dataset.streamState = state;
      if (hint) hint.hidden = state !== "reconnecting";
    }

    function track(e) {
      var m = ID.exec(e.lastEventId || "");
      if (m) at = { train: Number(m[1]), val: Number(m[2]) };
    }

    function close() {
      done = true;
      clearTimeout(timer);
      if (source) source.close();
      source = null;
      setState("closed");
    }

    function connect() {
      var u = new URL(url, window.location.href);
      u.searchParams.set("after_train", String(at.train));
      u.searchParams.set("after_val", String(at.val));
      var es = source = new EventSource(u.toString());
      es.onopen = function () { delay = RETRY_MS; setState("open"); };
      es.onerror = function () {
        if (done || es !== source) return;
        setState("reconnecting");
        if (es.readyState === EventSource.CLOSED) {  // the browser gave up: start a new stream
          source = null;
          timer = setTimeout(connect, delay);
          delay = Math.min(2 * delay, MAX_RETRY_MS);
        }
      };
      es.addEventListener("metrics", function (e) {
        track(e);
        var data = parse(e);
        if (data) handlers.metrics(data);
      });
      es.addEventListener("status", function (e) {
        track(e);
        var data = parse(e);
        if (data) div.dispatchEvent(new CustomEvent("loraboard-run-status", { bubbles: true, detail: data }));
      });
      es.addEventListener("end", function (e) {
        track(e);
        close();
        handlers.end(parse(e) || {});
      });
      es.addEventListener("gone", function () { close(); });
    }

    setState("connecting");
    connect();
    return { close: close };
  }

  window.LoraboardLive = { openStream: openStream };

  // ---- tab title and notifications -------------------------------------------------------------

  function initPage() {
    var div = document.getElementById("loss-chart");
    if (!div) return;
    var glyphs = {};
    try { glyphs = JSON.parse(div.dataset.statusGlyphs || "{}"); } catch (err) { glyphs = {}; }
    var name = div.dataset.runName || "";
    var state = { status: div.dataset.status || "", loss: num(parseFloat(div.dataset.trainLoss)) };
    var notified = false;
    var box = document.getElementById("notify");
    var button = document.getElementById("notify-button");
    var note = document.getElementById("notify-state");

    function head(status, loss) {
      return (glyphs[status] || "\u2022") + " " + word(status) + (loss !== null ? " " + loss.toFixed(3) : "");
    }

    function retitle() {
      document.title = [head(state.status, state.loss), name, "loraboard"].join(" \u00b7 ");
    }

    function canNotify() { return typeof window.Notification === "function"; }

    function showPermission() {
      if (!box) return;
      var permission = canNotify() ? window.Notification.permission : "unsupported";
      box.dataset.permission = permission;
      if (button) {
        button.hidden = permission === "granted" || permission === "unsupported";
        button.disabled = permission === "denied";
      }
      if (note) {
        note.textContent = {
          granted: "\u2713 You will be notified when this run ends.",
          denied: "Notifications are blocked for this site (the browser's site settings can allow them).",
          unsupported: "This browser cannot show notifications."
        }[permission] || "";
      }
    }

    function ask() {
      if (!canNotify()) return;
      var asked = window.Notification.requestPermission(showPermission);  // older browsers: callback only
      if (asked && typeof asked.then === "function") asked.then(showPermission, showPermission);
    }

    function notify(end) {
      if (notified || !canNotify() || window.Notification.permission !== "granted") return;
      notified = true;
      var lines = [];
      var best = end.best || {};
      if (num(best.val_loss) !== null) {
        lines.push("best val loss " + best.val_loss.toFixed(3) + " at iteration " + best.iteration);
      }
      if (num(end.train_loss) !== null) lines.push("last train loss " + end.train_loss.toFixed(3));
      if (end.error) lines.push(String(end.error));
      else if (end.stop_reason) lines.push(String(end.stop_reason));
      try {
        new window.Notification(head(end.status, null) + " \u00b7 " + name,
          { body: lines.join("\n"), tag: "loraboard-run-" + (div.dataset.runId || "") });
      } catch (err) {
        if (window.console) console.warn("run page: the notification could not be shown:", err);
      }
    }

    div.addEventListener("loraboard-run-status", function (e) {
      var d = e.detail || {};
      if (d.status) state.status = d.status;
      if (num(d.train_loss) !== null) state.loss = d.train_loss;
      retitle();
    });
    div.addEventListener("loraboard-run-ended", function (e) {
      var end = (e.detail && e.detail.end) || {};
      if (end.status) state.status = end.status;
      if (num(end.train_loss) !== null) state.loss = end.train_loss;
      retitle();
      notify(end);  // only a page that watched the run live hears its end
      if (box) box.hidden = true;
    });
    if (button) button.addEventListener("click", ask);
    showPermission();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", initPage);
  else initPage();
})();
