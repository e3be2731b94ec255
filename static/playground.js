/* The playground page: Generate queues the prompt (POST /api/generations, the form's fields as JSON) and streams
 * its columns side by side from GET /api/generations/{id}/events: `token` appends a column's text, `column` shows
 * its figures (tokens/s, time to the first token), `waiting` says why it has not started, `done` ends it.
 * Prompts asked (or kept with "Keep prompt") are listed under Prompt sets and saved as a set with
 * POST /api/prompt-sets. Text from the model is put in with textContent only.
 * State for tests: #playground-answers [data-generation-id, data-status]; each .playground-answer [data-column,
 * data-tokens, data-done]; .playground-text its text; .playground-figures [data-tps, data-first-token-s].
 */
(function () {
  "use strict";

  var form = document.getElementById("playground-form");
  if (!form) return;
  var output = document.getElementById("playground-output");
  var answers = document.getElementById("playground-answers");
  var errorBox = document.getElementById("playground-error");
  var button = document.getElementById("playground-generate");
  var kept = [];
  var source = null;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function refreshJob() {
    document.body.dispatchEvent(new CustomEvent("playground-refresh"));
  }

  function postJson(url, data) {
    return fetch(url, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(data),
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() }
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { status: response.status, body: body };
      });
    });
  }

  // An error answer in one line: {detail: "..."} or {detail: [{loc, msg}, ...]}.
  function problem(body) {
    var detail = body && body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map(function (d) {
        var where = (d.loc || []).filter(function (p) { return p !== "body"; }).join(".");
        return (where ? where + ": " : "") + d.msg;
      }).join("; ");
    }
    return "the request failed";
  }

  function field(name) {
    var el = form.elements.namedItem(name);
    return el ? el.value : "";
  }

  function chosenColumns() {
    var found = [];
    form.querySelectorAll('select[name="column"]').forEach(function (select) {
      if (!select.value) return;
      var label = select.options[select.selectedIndex].textContent.trim();
      if (select.value === "base") {
        found.push({ ref: null, label: "base model" });
      } else {
        var parts = select.value.split(":");
        found.push({ ref: { run_id: Number(parts[0]), iteration: Number(parts[1]) }, label: label });
      }
    });
    return found;
  }

  function currentPrompt() {
    var system = field("system").trim();
    return { system: system || null, prompt: field("prompt") };
  }

  function keep(item) {
    if (!item.prompt.trim()) return;
    var same = kept.some(function (k) { return k.prompt === item.prompt && k.system === item.system; });
    if (!same) kept.push(item);
    drawKept();
  }

  function drawKept() {
    var list = document.getElementById("playground-kept");
    var empty = document.getElementById("playground-kept-empty");
    list.textContent = "";
    kept.forEach(function (item, index) {
      var li = document.createElement("li");
      var text = document.createElement("span");
      text.className = "playground-kept-text";
      text.textContent = (item.system ? "[" + item.system + "] " : "") + item.prompt;
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "btn btn-sm";
      remove.textContent = "remove";
      remove.addEventListener("click", function () { kept.splice(index, 1); drawKept(); });
      li.appendChild(text);
      li.appendChild(remove);
      list.appendChild(li);
    });
    empty.hidden = kept.length > 0;
  }

  function panel(column, label) {
    var box = document.createElement("div");
    box.className = "playground-answer";
    box.dataset.column = String(column);
    box.dataset.tokens = "0";
    box.dataset.done = "false";
    var head = document.createElement("h3");
    head.className = "playground-answer-head";
    head.textContent = label;
    var waiting = document.createElement("p");
    waiting.className = "playground-answer-waiting muted small";
    waiting.textContent = "waiting for the model…";
    var text = document.createElement("pre");
    text.className = "playground-text";
    var figures = document.createElement("p");
    figures.className = "playground-figures muted small";
    box.appendChild(head);
    box.appendChild(waiting);
    box.appendChild(text);
    box.appendChild(figures);
    return box;
  }

  function panelOf(column) {
    return answers.querySelector('.playground-answer[data-column="' + column + '"]');
  }

  function fixed(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "—";
  }

  function showFigures(data) {
    var box = panelOf(data.column);
    if (!box) return;
    box.dataset.done = "true";
    box.dataset.tokens = String(data.tokens);
    box.querySelector(".playground-text").textContent = data.text;
    var figures = box.querySelector(".playground-figures");
    figures.dataset.tps = data.tokens_per_second === null ? "" : String(data.tokens_per_second);
    figures.dataset.firstTokenS = data.first_token_s === null ? "" : String(data.first_token_s);
    figures.textContent = fixed(data.tokens_per_second, 1) + " tokens/s · first token after " +
      fixed(data.first_token_s, 3) + " s · " + data.tokens + " tokens" +
      (data.finish_reason === "length" ? " (max tokens reached)" : "");
  }

  function stream(generationId) {
    if (source) source.close();
    answers.dataset.generationId = String(generationId);
    answers.dataset.status = "streaming";
    source = new EventSource("/api/generations/" + generationId + "/events");
    source.addEventListener("token", function (event) {
      var data = JSON.parse(event.data);
      var box = panelOf(data.column);
      if (!box || box.dataset.done === "true") return;
      box.querySelector(".playground-answer-waiting").hidden = true;
      box.querySelector(".playground-text").textContent += data.text;
      box.dataset.tokens = String(data.seq + 1);
    });
    source.addEventListener("column", function (event) {
      var data = JSON.parse(event.data);
      var box = panelOf(data.column);
      if (box) box.querySelector(".playground-answer-waiting").hidden = true;
      showFigures(data);
    });
    source.addEventListener("waiting", function (event) {
      var data = JSON.parse(event.data);
      answers.querySelectorAll(".playground-answer-waiting").forEach(function (p) {
        p.textContent = "The playground " + data.reason + ": it starts by itself then (or Start anyway above).";
      });
      refreshJob();
    });
    source.addEventListener("done", function (event) {
      var data = JSON.parse(event.data);
      source.close();
      source = null;
      answers.dataset.status = data.status;
      button.disabled = false;
      if (data.error) errorBox.textContent = "The answer " + data.status + ": " + data.error;
      refreshJob();
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.textContent = "";
    var columns = chosenColumns();
    if (!columns.length) { errorBox.textContent = "pick at least one column"; return; }
    var prompt = currentPrompt();
    var body = {
      model: field("model") || null,
      adapters: columns.map(function (c) { return c.ref; }),
      prompt: prompt.prompt, system: prompt.system,
      temperature: Number(field("temperature")), top_p: Number(field("top_p")),
      max_tokens: Number(field("max_tokens")), seed: Number(field("seed"))
    };
    button.disabled = true;
    postJson("/api/generations", body).then(function (answer) {
      if (answer.status !== 201) {
        button.disabled = false;
        errorBox.textContent = problem(answer.body);
        return;
      }
      keep(prompt);
      answers.textContent = "";
      columns.forEach(function (c, index) { answers.appendChild(panel(index, c.label)); });
      output.hidden = false;
      stream(answer.body.generation_id);
      refreshJob();
    }).catch(function (err) {
      button.disabled = false;
      errorBox.textContent = "could not reach the dashboard: " + err;
    });
  });

  document.getElementById("playground-keep").addEventListener("click", function () {
    keep(currentPrompt());
  });

  var setForm = document.getElementById("playground-set-form");
  setForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var result = document.getElementById("playground-set-result");
    result.textContent = "";
    result.className = "small";
    var body = {
      run_id: Number(setForm.elements.namedItem("run_id").value), name: setForm.elements.namedItem("name").value,
      prompts: kept,
      settings: { temperature: Number(field("temperature")), top_p: Number(field("top_p")),
        max_tokens: Number(field("max_tokens")), seed: Number(field("seed")) }
    };
    postJson("/api/prompt-sets", body).then(function (answer) {
      if (answer.status !== 201) {
        result.className = "small error";
        result.textContent = problem(answer.body);
        return;
      }
      var link = document.createElement("a");
      link.href = "/prompt-sets/" + answer.body.id;
      link.id = "playground-set-link";
      link.textContent = "Saved: " + answer.body.name + " (" + answer.body.prompts.length + " prompts)";
      result.appendChild(link);
    });
  });

  drawKept();
})();
