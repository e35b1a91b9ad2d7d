// Draw the dashboards' charts with the locally served Plotly (no CDN).
(function () {
  "use strict";
  var node = document.getElementById("charts-data");
  if (!node || !window.Plotly) { return; }
  var charts = JSON.parse(node.textContent);
  charts.forEach(function (c) {
    var el = document.getElementById("chart-" + c.id);
    if (!el || !c.rows.length) { return; }
    var traces = [];
    var layout = { margin: { t: 20, r: 20, b: 60, l: 60 }, yaxis: { title: { text: c.unit } }, showlegend: c.kind !== "bar" };
    if (c.kind === "box") {
      var groups = {};
      c.rows.forEach(function (r) { (groups[r.group] = groups[r.group] || []).push(r.y); });
      Object.keys(groups).sort().forEach(function (g) { traces.push({ type: "box", name: g, y: groups[g], boxpoints: "outliers" }); });
    } else if (c.kind === "scatter") {
      var byView = {};
      c.rows.forEach(function (r) { var g = r.group || "(no view)"; (byView[g] = byView[g] || { x: [], y: [] }); byView[g].x.push(r.x); byView[g].y.push(r.y); });
      Object.keys(byView).sort().forEach(function (g) { traces.push({ type: "scatter", mode: "markers", name: g, x: byView[g].x, y: byView[g].y }); });
      layout.xaxis = { title: { text: "compressed breast thickness (mm)" } };
    } else {
      traces.push({ type: "bar", x: c.rows.map(function (r) { return r.x; }), y: c.rows.map(function (r) { return r.y; }) });
    }
    window.Plotly.newPlot(el, traces, layout, { displaylogo: false, responsive: true });
    el.setAttribute("data-drawn", "1");
  });
})();
// Audit figures: plotly figures made by dicomlake.audit, drawn as they are.
(function () {
  "use strict";
  var node = document.getElementById("figures-data");
  if (!node || !window.Plotly) { return; }
  JSON.parse(node.textContent).forEach(function (c) {
    var el = document.getElementById("figure-" + c.id);
    if (!el) { return; }
    window.Plotly.newPlot(el, c.figure.data || [], c.figure.layout || {}, { displaylogo: false, responsive: true });
    el.setAttribute("data-drawn", "1");
  });
})();
