// The operator's views: the topology of sites and clouds, capacity, alarms, events.
import { api, get, post } from "./api.js";
import { h, meter, stateCell, svg, table, when } from "./dom.js";
import { t } from "./i18n.js";

const HEALTH_COLOUR = { healthy: "#1a7f37", down: "#b42318", unknown: "#9a6700" };

// Sites as columns, their clouds stacked inside, links between sites: health at a glance.
function topology(clouds) {
  const sites = [...new Set(clouds.map((c) => c.site))].sort();
  const width = Math.max(360, sites.length * 220);
  const rows = Math.max(1, ...sites.map((s) => clouds.filter((c) => c.site === s).length));
  const height = 70 + rows * 56;
  const parts = [];
  sites.forEach((site, i) => {
    const x = 10 + i * 220;
    if (i > 0) parts.push(svg("line", { x1: x - 20, y1: 40, x2: x, y2: 40, stroke: "#8c959f", "stroke-dasharray": "4 3" }));
    parts.push(svg("rect", { x, y: 10, width: 200, height: height - 20, rx: 8, fill: "#f6f8fa", stroke: "#d0d7de" }));
    parts.push(svg("text", { x: x + 10, y: 30, "font-weight": "bold" }, site));
    clouds.filter((c) => c.site === site).forEach((c, j) => {
      const y = 45 + j * 56;
      parts.push(svg("rect", { x: x + 10, y, width: 180, height: 46, rx: 6, fill: "#fff", stroke: HEALTH_COLOUR[c.health] || "#8c959f", "stroke-width": 2 }));
      parts.push(svg("circle", { cx: x + 24, cy: y + 16, r: 6, fill: HEALTH_COLOUR[c.health] || "#8c959f" }));
      parts.push(svg("text", { x: x + 36, y: y + 20 }, `${c.name} (${c.kind})`));
      parts.push(svg("text", { x: x + 20, y: y + 38, fill: "#57606a" }, `${c.used.instances}/${c.capacity.instances} ${t("instances")}`));
    });
  });
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", class: "chart", "aria-label": t("overview.topology") },
    svg("title", {}, t("overview.topology")), ...parts);
}

function capacity(clouds) {
  return table([
    [t("col.name"), (c) => c.name], [t("col.kind"), (c) => c.kind], [t("col.site"), (c) => c.site],
    [t("col.health"), (c) => h("span", { title: c.health_message }, stateCell(c.health))],
    [t("col.cpu"), (c) => meter(c.used.cpu / 1000, c.capacity.cpu / 1000, `${c.name} cpu`)],
    [t("col.memory"), (c) => meter(c.used.memory, c.capacity.memory, `${c.name} memory`)],
    [t("col.instances"), (c) => meter(c.used.instances, c.capacity.instances, `${c.name} instances`)],
  ], clouds);
}

export async function overview(main, ctx) {
  const [clouds, status] = await Promise.all([get("/clouds"), get("/status")]);
  const tiles = h("div", { class: "grid" },
    h("div", { class: "tile" }, h("strong", {}, new Set(clouds.map((c) => c.site)).size), t("sites")),
    h("div", { class: "tile" }, h("strong", {}, clouds.length), t("clouds")),
    h("div", { class: "tile" }, h("strong", {}, clouds.filter((c) => c.health === "healthy").length), t("healthy")),
    h("div", { class: "tile" }, h("strong", {}, clouds.reduce((n, c) => n + c.used.instances, 0)), t("instances")));
  main.replaceChildren(h("h1", {}, t("overview.title")), tiles,
    h("h2", {}, t("overview.topology")), topology(clouds),
    h("h2", {}, t("overview.capacity")), capacity(clouds),
    h("p", { class: "muted" }, `Shanzhi ${status.version ?? ""}`));
  ctx.every(10, () => overview(main, ctx));
}

export async function clouds(main) {
  main.replaceChildren(h("h1", {}, t("nav.clouds")), capacity(await get("/clouds")));
}

export async function events(main, ctx) {
  const rows = (await get("/events?limit=200")).reverse();
  main.replaceChildren(h("h1", {}, t("events.title")), rows.length ? table([
    [t("col.time"), (e) => when(e.at ?? e.created_at)], [t("col.object"), (e) => `${e.object_kind ?? ""} ${e.object_name ?? ""}`],
    [t("col.reason"), (e) => e.reason], [t("col.message"), (e) => e.message],
  ], rows) : h("p", {}, t("none")));
  ctx.every(5, () => events(main, ctx));
}

export async function alarms(main, ctx) {
  const [rows, rules, silences] = await Promise.all([get("/alarms"), get("/alarm-rules"), get("/alarm-silences")]);
  const state = (a) => a.resolved_at ? h("span", { class: "ok" }, t("alarm.resolved"))
    : a.silenced ? h("span", { class: "muted" }, t("alarm.silenced")) : h("span", { class: "bad" }, t("alarm.firing"));
  const silence = (r) => h("button", { class: "act", type: "button", onclick: async () => {
    try { await post("/alarm-silences", { rule: r.id, vdc: r.vdc, for: "1h", comment: "console" }); ctx.toast(`${r.name}: ${t("alarm.silence")}`); }
    catch (err) { ctx.toast(err.message); }
    alarms(main, ctx);
  } }, t("alarm.silence"));
  main.replaceChildren(h("h1", {}, t("alarms.title")), rows.length ? table([
    [t("col.time"), (a) => when(a.at)], [t("col.severity"), (a) => h("span", { class: a.severity === "critical" ? "bad" : "warn" }, a.severity)],
    [t("col.state"), state], [t("col.vdc"), (a) => a.vdc ?? ""], [t("col.message"), (a) => a.message],
    [t("col.ack"), (a) => a.acknowledged_by ? `${a.acknowledged_by} ${when(a.acknowledged_at)}`
      : h("button", { class: "act", type: "button", onclick: async () => { await post(`/alarms/${a.id}/ack`); alarms(main, ctx); } }, t("ack"))],
  ], rows.slice().reverse()) : h("p", {}, t("none")),
  h("h2", {}, t("alarm.rules")), rules.length ? table([
    [t("col.name"), (r) => r.name], [t("col.vdc"), (r) => r.vdc ?? "—"],
    [t("alarm.when"), (r) => r.event ? `event ${r.event}` : r.absent ? `${r.metric} absent` : `${r.metric} ${r.above !== null ? `> ${r.above}` : `< ${r.below}`}`],
    [t("alarm.for"), (r) => `${r.for}s`], [t("col.severity"), (r) => r.severity],
    [t("col.actions"), silence],
  ], rules) : h("p", {}, t("none")),
  h("h2", {}, t("alarm.silences")), silences.length ? table([
    [t("col.id"), (x) => x.id], [t("alarm.rule"), (x) => x.rule ?? "*"], [t("col.vdc"), (x) => x.vdc ?? "*"],
    [t("col.expires"), (x) => when(x.until)], [t("col.user"), (x) => x.created_by],
  ], silences) : h("p", {}, t("none")));
  ctx.every(5, () => alarms(main, ctx));
}

// Re-placement plans: propose (rebalance, or evacuate a cloud), review the moves, apply or drop.
export async function plans(main, ctx) {
  const clouds = await get("/clouds");
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = t("loading");
    const body = { kind: form.kind.value, time_limit: 5 };
    if (form.kind.value === "evacuate") body.cloud = form.cloud.value;
    try { const plan = await post("/plans", body); location.hash = `#/plans/${plan.id}`; } catch (err) { error.textContent = err.message; }
  } },
  h("label", { for: "kind" }, t("plan.kind")),
  h("select", { id: "kind", name: "kind" }, h("option", { value: "rebalance" }, t("plan.rebalance")), h("option", { value: "evacuate" }, t("plan.evacuate"))),
  h("label", { for: "cloud" }, t("plan.cloud")),
  h("select", { id: "cloud", name: "cloud" }, clouds.map((c) => h("option", { value: c.name }, c.name))),
  error, h("button", { class: "primary", type: "submit" }, t("plan.propose")));
  const parts = [h("h1", {}, t("nav.plans")), form];
  if (ctx.args[0]) {
    const plan = await get(`/plans/${Number(ctx.args[0])}`);
    const act = (label, fn) => h("button", { class: "act", type: "button", onclick: async () => {
      try { await fn(); ctx.refresh(); } catch (err) { ctx.toast(err.message); }
    } }, label);
    parts.push(h("h2", {}, `${t("plan.plan")} ${plan.id}: ${plan.kind} (${plan.status})`),
      h("p", {}, plan.summary),
      plan.moves.length ? table([
        [t("col.name"), (m) => m.instance], [t("plan.from"), (m) => `${m.from.cloud}/${m.from.host}`],
        [t("plan.to"), (m) => `${m.to.cloud}/${m.to.host}`], [t("col.why"), (m) => m.reason],
      ], plan.moves) : h("p", {}, t("none")),
      plan.status === "proposed" ? h("p", {}, act(t("plan.apply"), () => post(`/plans/${plan.id}/apply`)),
        act(t("plan.drop"), () => api("DELETE", `/plans/${plan.id}`))) : null);
  }
  main.replaceChildren(...parts);
}

