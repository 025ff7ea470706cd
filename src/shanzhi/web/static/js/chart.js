// A line chart in SVG: one line per series of [time, value] points, the axes labelled.
import { svg } from "./dom.js";

const COLOURS = ["#0b5cad", "#b42318", "#1a7f37", "#9a6700", "#6639ba", "#0f7b8a"];

export function lineChart(series, { title, width = 720, height = 240 } = {}) {
  const all = Object.values(series).flat();
  const pad = { left: 48, right: 12, top: 16, bottom: 28 };
  const times = all.map(([x]) => x);
  const x0 = Math.min(...times), x1 = Math.max(...times, x0 + 1);
  const yMax = Math.max(...all.map(([, y]) => y), 1e-3) * 1.1;
  const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - (y / yMax) * (height - pad.top - pad.bottom);
  const parts = [svg("title", {}, title),
    svg("line", { x1: pad.left, y1: Y(0), x2: width - pad.right, y2: Y(0), stroke: "#8c959f" }),
    svg("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: Y(0), stroke: "#8c959f" }),
    svg("text", { x: 4, y: pad.top + 4 }, yMax.toFixed(2)), svg("text", { x: 4, y: Y(0) }, "0"),
    svg("text", { x: pad.left, y: height - 8 }, new Date(x0).toLocaleTimeString()),
    svg("text", { x: width - pad.right - 64, y: height - 8 }, new Date(x1).toLocaleTimeString())];
  Object.entries(series).forEach(([name, points], i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = points.map(([x, y], j) => `${j ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
    parts.push(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "data-series": name }));
    parts.push(svg("text", { x: pad.left + 8 + i * 180, y: pad.top + 2, fill: colour }, name));
  });
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart", "aria-label": title }, ...parts);
}
