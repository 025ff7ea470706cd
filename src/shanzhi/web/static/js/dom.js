// Building the page from data without innerHTML: text is always text (no markup injection).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  for (const child of children.flat(Infinity)) if (child !== null && child !== undefined) el.append(child);
  return el;
}

// A table: columns are [heading, row => cell] pairs.
export function table(columns, rows, caption) {
  return h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map(([title]) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => h("td", {}, cell(row)))))));
}

export function meter(used, total, label) {
  const max = Math.max(total, 1e-9);
  return h("span", {},
    h("meter", { min: 0, max, value: Math.min(used, max), high: max * 0.85, "aria-label": label }),
    " ", h("span", { class: "muted" }, `${fmt(used)} / ${fmt(total)}`));
}

export function fmt(n) {
  if (typeof n !== "number") return String(n ?? "");
  if (Math.abs(n) >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} Gi`;
  if (Math.abs(n) >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} Mi`;
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function stateCell(state) {
  return h("span", { class: `state-${state}` }, state);
}
