/* Run page loss chart, part: the small metric charts under it (learning rate, tokens/s,
 * iterations/s, memory), found by id: #chart-lr, #chart-tps, #chart-its, #chart-mem. The memory chart
 * has two traces: MLX's peak figure and the worker process's own memory (resident, or the macOS footprint).
 *
 * loraboardChart.smallCharts(chart) is called once by static/run_chart.js with its shared state object
 * `chart` (div, xMode, annotated; read at call time). It returns:
 *   columns(t)          per small chart, one y column per trace, for the train points t,
 *   draw(tx, cols)      the first (and only) newPlot of each small chart,
 *   restyle(tx, cols)   replace their points; extend(tx, cols): append points,
 *   showTicks(show)     show or hide their tick labels (hidden while nothing is drawn),
 *   syncRange()         follow the loss chart's x range (its zoom, and its autorange padding).
 * Small charts missing from the page are skipped. Needs static/chart_common.js loaded before this script.
 */
(function () {
  "use strict";

  var C = window.loraboardChart;
  var SMALL = [
    { id: "chart-lr", key: "lr", title: "learning rate", color: "#7c3aed", hover: "%{y:.3~e}", tickformat: "~g" },
    { id: "chart-tps", key: "tps", title: "tokens/s", color: "#0891b2", hover: "%{y:,.0f}" },
    { id: "chart-its", key: "its", title: "iterations/s", color: "#0d9488", hover: "%{y:.3~f}" },
    { id: "chart-mem", key: "mem", title: "memory (GB)", color: "#db2777", hover: "%{y:.2f} GB",
      name: "MLX peak", second: { key: "rss", name: "worker", color: "#475569", dash: "dot" } }
  ];

  function traces(s, tx, ys) {
    var out = [{ type: "scatter", mode: "lines", x: tx, y: ys[0], name: s.name || s.title,
      line: { color: s.color, width: 1.5 }, hovertemplate: s.hover + "<extra>" + (s.name || "") + "</extra>" }];
    if (s.second) {
      out.push({ type: "scatter", mode: "lines", x: tx, y: ys[1], name: s.second.name,
        line: { color: s.second.color, width: 1.5, dash: s.second.dash },
        hovertemplate: s.hover + "<extra>" + s.second.name + "</extra>" });
    }
    return out;
  }
  function indices(s) { return s.second ? [0, 1] : [0]; }

  function smallCharts(chart) {
    var smalls = SMALL.map(function (s) { return { spec: s, div: document.getElementById(s.id) }; })
      .filter(function (s) { return s.div; });

    function layout(s) {
      return {
        title: { text: s.title, font: { size: 12, color: "#334155" }, x: 0.01, xanchor: "left", y: 0.97, yanchor: "top" },
        xaxis: { zeroline: false, fixedrange: true, hoverformat: C.X_HOVER[chart.xMode], ticksuffix: C.X_SUFFIX[chart.xMode],
          tickfont: { size: 10 }, showticklabels: !chart.annotated },
        yaxis: { zeroline: false, fixedrange: true, tickfont: { size: 10 }, tickformat: s.tickformat, automargin: true,
          rangemode: "tozero",  // a constant learning rate would otherwise get a meaningless ±1 range
          showticklabels: !chart.annotated },
        hovermode: "x", showlegend: !!s.second, height: 180,
        legend: { orientation: "h", x: 1, xanchor: "right", y: 1, yanchor: "bottom", font: { size: 10 },
          bgcolor: "rgba(0,0,0,0)" },
        margin: { l: 50, r: 12, t: 26, b: 28 },
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff"
      };
    }

    function columns(t) {
      return smalls.map(function (s) {
        var keys = s.spec.second ? [s.spec.key, s.spec.second.key] : [s.spec.key];
        return keys.map(function (k) { return t.map(function (p) { return p[k]; }); });
      });
    }

    function draw(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        return Plotly.newPlot(s.div, traces(s.spec, tx, cols[i]), layout(s.spec),
          { responsive: true, displaylogo: false, displayModeBar: false });
      }));
    }

    function restyle(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        var idx = indices(s.spec);
        return Plotly.restyle(s.div, { x: idx.map(function () { return tx; }), y: cols[i] }, idx);
      }));
    }

    function extend(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        var idx = indices(s.spec);
        return Plotly.extendTraces(s.div, { x: idx.map(function () { return tx; }), y: cols[i] }, idx);
      }));
    }

    function showTicks(show) {
      smalls.forEach(function (s) {
        Plotly.relayout(s.div, { "xaxis.showticklabels": show, "yaxis.showticklabels": show });
      });
    }

    function syncRange() {
      var xa = chart.div._fullLayout && chart.div._fullLayout.xaxis;
      if (!xa || !Array.isArray(xa.range)) return;
      var r = xa.range.slice(), mode = chart.xMode;
      smalls.forEach(function (s) {
        var sx = s.div._fullLayout && s.div._fullLayout.xaxis;
        if (!sx || sx.range[0] !== r[0] || sx.range[1] !== r[1] || sx.ticksuffix !== C.X_SUFFIX[mode]) {
          Plotly.relayout(s.div, { "xaxis.range": r, "xaxis.hoverformat": C.X_HOVER[mode], "xaxis.ticksuffix": C.X_SUFFIX[mode] });
        }
      });
    }

    return { columns: columns, draw: draw, restyle: restyle, extend: extend, showTicks: showTicks, syncRange: syncRange };
  }

  C.smallCharts = smallCharts;
})();
