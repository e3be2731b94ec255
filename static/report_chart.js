/* The run report's interactive loss chart: data inlined in the page (#report-chart-data), drawn with the
 * vendored Plotly; nothing is fetched. */
(function () {
  "use strict";

  function draw() {
    var holder = document.getElementById("report-chart");
    var source = document.getElementById("report-chart-data");
    if (!holder || !source || !window.Plotly) return;
    var data = JSON.parse(source.textContent);
    var traces = [
      { name: "train loss", x: data.train.x, y: data.train.y, mode: "lines", line: { color: "#2563eb", width: 2 } },
      { name: "validation loss", x: data.val.x, y: data.val.y, mode: "lines+markers",
        line: { color: "#ea580c", width: 2 }, marker: { size: 5 } },
      { name: "checkpoint", x: data.checkpoints.x, y: data.checkpoints.y, mode: "markers",
        marker: { color: "#475569", size: 8, symbol: "diamond" } }
    ];
    if (data.best) {
      traces.push({ name: data.best_label + " checkpoint", x: [data.best.x], y: [data.best.y], mode: "markers",
        marker: { color: "#16a34a", size: 14, symbol: "star", line: { color: "#ffffff", width: 1 } } });
    }
    var shapes = data.spans.map(function (span) {
      return { type: "rect", xref: "x", yref: "paper", x0: span[0], x1: span[1], y0: 0, y1: 1,
        fillcolor: "#fee2e2", opacity: 0.6, line: { width: 0 }, layer: "below" };
    });
    if (data.early_stop !== null) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: data.early_stop, x1: data.early_stop, y0: 0, y1: 1,
        line: { color: "#dc2626", dash: "dash", width: 1.5 } });
    }
    var layout = {
      margin: { l: 56, r: 16, t: 16, b: 48 }, shapes: shapes, hovermode: "x unified",
      xaxis: { title: { text: "iteration" }, tickformat: ",d" }, yaxis: { title: { text: "loss" } },
      legend: { orientation: "h", y: 1.12 }
    };
    window.Plotly.newPlot(holder, traces, layout, { displaylogo: false, responsive: true });
  }

  function start() {
    var print = document.getElementById("report-print");
    if (print) print.addEventListener("click", function () { window.print(); });
    draw();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
