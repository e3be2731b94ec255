/* Run page loss chart, part: the small metric charts under it (learning rate, tokens/s,
 * iterations/s, peak memory), found by id: #chart-lr, #chart-tps, #chart-its, #chart-mem.
 *
 * loraboardChart.smallCharts(chart) is called once by static/run_chart.js with its shared state object
 * `chart` (div, xMode, annotated; read at call time). It returns:
 *   columns(t)          one y column per small chart for the train points t,
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
    { id: "chart-mem", key: "mem", title: "peak memory (GB)", color: "#db2777", hover: "%{y:.2f} GB" }
  ];

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
        hovermode: "x", showlegend: false, height: 180,
        margin: { l: 50, r: 12, t: 26, b: 28 },
        paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#ffffff"
      };
    }

    function columns(t) {
      return smalls.map(function (s) { return t.map(function (p) { return p[s.spec.key]; }); });
    }

    function draw(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        return Plotly.newPlot(s.div, [{ type: "scatter", mode: "lines", x: tx, y: cols[i], name: s.spec.title,
          line: { color: s.spec.color, width: 1.5 }, hovertemplate: s.spec.hover + "<extra></extra>" }],
        layout(s.spec), { responsive: true, displaylogo: false, displayModeBar: false });
      }));
    }

    function restyle(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        return Plotly.restyle(s.div, { x: [tx], y: [cols[i]] }, [0]);
      }));
    }

    function extend(tx, cols) {
      return Promise.all(smalls.map(function (s, i) {
        return Plotly.extendTraces(s.div, { x: [tx], y: [cols[i]] }, [0]);
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
