// A department's views: its VDC tree and quotas, its apps (where, why, health, metrics, and for
// a protected app its DR members, recovery plans and reports), deploying from a form or a
// document, approvals to act on, its bill.
import { ApiError, api, get, post, q } from "./api.js";
import { lineChart } from "./chart.js";
import { fmt, h, meter, stateCell, table, when } from "./dom.js";
import { t } from "./i18n.js";

function quota(used, total, label) {
  return total === null || total === undefined ? h("span", {}, `${fmt(used)} / ∞`) : meter(used, total, label);
}

export async function vdcs(main) {
  const rows = await get("/vdcs");
  main.replaceChildren(h("h1", {}, t("vdcs.title")), table([
    [t("col.vdc"), (v) => h("span", { style: `padding-left:${(v.path.split("/").length - 1) * 1.25}rem` }, v.path)],
    [t("col.cpu"), (v) => quota((v.usage.cpu ?? 0) / 1000, v.quota.cpu === null ? null : v.quota.cpu / 1000, `${v.path} cpu`)],
    [t("col.memory"), (v) => quota(v.usage.memory ?? 0, v.quota.memory, `${v.path} memory`)],
    [t("col.instances"), (v) => quota(v.usage.instances ?? 0, v.quota.instances, `${v.path} instances`)],
    [t("nav.apps"), (v) => v.apps],
  ], rows));
}

function ready(app) {
  return app.components.map((c) => `${c.name} ${c.ready}/${c.desired}`).join(", ");
}

const PAGE = 50;

export async function apps(main, ctx) {
  const offset = Number(ctx.args[0] || 0);
  const rows = await get(`/apps?limit=${PAGE + 1}&offset=${offset}`);  // one more: is there a next page?
  const pager = h("nav", { "aria-label": t("pages") },
    offset > 0 ? h("a", { href: `#/apps/${Math.max(0, offset - PAGE)}` }, `← ${t("previous")}`) : null, " ",
    rows.length > PAGE ? h("a", { href: `#/apps/${offset + PAGE}` }, `${t("next")} →`) : null);
  main.replaceChildren(h("h1", {}, t("apps.title")), rows.length ? table([
    [t("col.name"), (a) => h("a", { href: `#/app/${q(a.vdc)}/${q(a.name)}` }, a.name)],
    [t("col.vdc"), (a) => a.vdc], [t("col.status"), (a) => stateCell(a.status)], [t("col.replicas"), ready],
    [t("col.time"), (a) => when(a.updated_at)],
  ], rows.slice(0, PAGE)) : h("p", {}, t("none")), pager);
  ctx.every(5, () => apps(main, ctx));
}

let logShown = "";
let specOpen = false;

async function showLog(name) {
  const out = await get(`/instances/${q(name)}/logs?tail=8192`);
  logShown = `${name}:\n${out.text || "(empty)"}`;
  const pre = document.getElementById("log");
  pre.hidden = false;
  pre.textContent = logShown;
}

// Points kept in the page between polls: stored minutes, then each poll's latest sample.
const seen = new Map();

export async function app(main, ctx) {
  const [vdc, name] = ctx.args;
  if (ctx.fresh) logShown = "";
  if (ctx.fresh) drError = "";
  const where = `${q(name)}?vdc=${q(vdc)}`;
  const [doc, instances, events, metrics] = await Promise.all([
    get(`/apps/${where}`), get(`/instances?app=${q(name)}&vdc=${q(vdc)}`),
    get(`/events?app=${q(name)}&vdc=${q(vdc)}&limit=50`), get(`/apps/${q(name)}/metrics?vdc=${q(vdc)}&since=1h`),
  ]);
  const protectedApp = (doc.spec.spec.dr?.tier ?? "none") !== "none";
  const dr = protectedApp ? await drSection(vdc, name, ctx) : null;
  const key = `${vdc}/${name}`;
  const series = seen.get(key) || {};
  for (const p of [...metrics.points, ...metrics.latest]) {
    const line = (series[p.instance] ||= []);
    const at = Date.parse(p.at);
    if (!line.length || line[line.length - 1][0] < at) line.push([at, p.cpu]);
  }
  seen.set(key, series);
  const live = new Set(instances.map((i) => i.name));
  const shown = Object.fromEntries(Object.entries(series).filter(([inst, pts]) => live.has(inst) && pts.length));
  const chart = Object.keys(shown).length ? lineChart(shown, { title: t("app.metrics") }) : h("p", { class: "muted" }, t("app.noMetrics"));
  main.replaceChildren(
    h("h1", {}, `${name} `, h("span", { class: "muted" }, vdc), " ", stateCell(doc.status)),
    h("p", {}, ready(doc)),
    scaleForm(doc, ctx),
    h("h2", {}, t("app.instances")),
    table([
      [t("col.name"), (i) => i.name], [t("col.state"), (i) => h("span", { title: i.reason }, stateCell(i.state))],
      [t("col.cloud"), (i) => `${i.cloud ?? ""} ${i.site ? `(${i.site})` : ""}`], [t("col.host"), (i) => i.host ?? ""],
      [t("col.endpoint"), (i) => i.endpoint ?? ""], [t("col.why"), (i) => i.placement],
      [t("app.logs"), (i) => i.cloud ? h("button", { class: "act", type: "button", onclick: () => showLog(i.name) }, t("app.logs")) : ""],
    ], instances),
    h("pre", { id: "log", hidden: !logShown, "aria-live": "polite" }, logShown),
    h("h2", {}, t("app.metrics")), h("div", { id: "metrics" }, chart),
    dr,
    h("details", { open: specOpen || null, ontoggle: (e) => { specOpen = e.target.open; } },
      h("summary", {}, `${t("app.spec")} (${t("app.generation")} ${doc.generation})`),
      h("pre", { id: "spec" }, JSON.stringify(doc.spec, null, 2))),
    h("h2", {}, t("app.events")),
    table([[t("col.time"), (e) => when(e.at)], [t("col.reason"), (e) => e.reason], [t("col.message"), (e) => e.message]],
      events.slice().reverse()));
  ctx.every(5, () => app(main, { ...ctx, fresh: false }));
}

let drError = "";

// A protected app's DR: its databases' members, the recovery plans of its tier (ordered steps,
// last run), the reports, and asking to activate the remote centre (held for approval).
async function drSection(vdc, name, ctx) {
  const where = `?vdc=${q(vdc)}`;
  const [st, plans, reports] = await Promise.all([
    get(`/apps/${q(name)}/dr${where}`), get(`/apps/${q(name)}/dr/plans${where}`),
    get(`/dr/reports?app=${q(name)}&vdc=${q(vdc)}`),
  ]);
  const members = st.databases.flatMap((d) => d.members.map((m) => ({ ...m, database: d.component })));
  const error = h("p", { class: "error", role: "alert", id: "dr-error" }, drError);
  const remote = ["two-sites-three-centres", "remote-backup"].includes(st.tier.tier);
  const activate = remote ? h("button", { class: "act", type: "button", id: "dr-activate",
    onclick: async () => {
      drError = "";
      error.textContent = "";
      try {
        const held = await post(`/apps/${q(name)}/dr/activate-remote${where}`, { note: "" });
        ctx.toast(`${t("dr.held")} #${held.id}`);
      } catch (err) { drError = err.message; error.textContent = err.message; }
    } }, t("dr.activate")) : null;
  const step = (s) => h("li", {}, `[${s.phase}] ${s.step} (${s.by})`);
  const last = (p) => p.last_run ? `${p.last_run.outcome} ${when(p.last_run.at)}` : t("dr.neverRun");
  return h("section", { id: "dr", "aria-label": t("dr.title") },
    h("h2", {}, `${t("dr.title")}: ${st.tier.tier}`),
    members.length ? table([
      [t("col.name"), (m) => m.name], [t("col.site"), (m) => m.site ?? ""], [t("col.role"), (m) => m.role],
      [t("col.state"), (m) => stateCell(m.state)], [t("dr.lag"), (m) => m.lag_bytes ?? ""],
    ], members) : h("p", { class: "muted" }, t("dr.noMembers")),
    h("h3", {}, t("dr.plans")),
    ...Object.entries(plans.plans).map(([kind, p]) => h("details", { class: "plan", "data-kind": kind },
      h("summary", {}, `${kind} (${p.automatic ? t("dr.automatic") : t("dr.onCommand")}; ${last(p)})`),
      h("ol", {}, p.steps.map(step)))),
    activate, error,
    h("h3", {}, t("dr.reports")),
    reports.length ? table([
      [t("col.time"), (r) => when(r.started_at)], [t("col.kind"), (r) => r.kind],
      [t("col.result"), (r) => stateCell(r.outcome)], [t("col.message"), (r) => r.summary],
    ], reports.slice().reverse()) : h("p", {}, t("none")));
}

function scaleForm(doc, ctx) {
  const error = h("p", { class: "error", role: "alert" });
  const spec = doc.spec;
  const inputs = spec.spec.components.map((c) =>
    h("span", {}, h("label", { for: `replicas-${c.name}` }, `${t("app.replicas")} ${c.name}`),
      h("input", { id: `replicas-${c.name}`, name: c.name, type: "number", min: 0, value: c.replicas ?? 1, style: "width:6rem" })));
  return h("form", { class: "card", "aria-label": t("app.scale"), onsubmit: async (event) => {
    event.preventDefault();
    const next = structuredClone(spec);
    for (const c of next.spec.components) c.replicas = Number(event.target.elements[c.name].value);
    try {
      const out = await post("/apps", next);
      ctx.toast(out.outcome === "held" ? t("deploy.held") : `${t("deploy.done")}: ${out.outcome}`);
      ctx.refresh();
    } catch (err) { error.textContent = err.message; }
  } }, h("h2", {}, t("app.scale")), inputs, error, h("button", { class: "primary", type: "submit" }, t("app.apply")));
}

// The form builds the same App document one would write by hand; errors land on their field.
const FIELDS = {
  "metadata.name": "name", "metadata.vdc": "vdc", "spec.components[0].name": "component",
  "spec.components[0].replicas": "replicas", "spec.components[0].resources.cpu": "cpu",
  "spec.components[0].resources.memory": "memory", "spec.components[0].image": "image",
  "spec.components[0].run.command": "command", "spec.components[0].ports[0].port": "port",
  "spec.placement.clouds.tags": "tags",
};

export async function deploy(main, ctx) {
  const vdcList = await get("/vdcs");
  const field = (id, label, attrs = {}) => {
    const { value, ...rest } = attrs;  // a textarea's value is its text, not an attribute
    const input = attrs.rows ? h("textarea", { id, name: id, ...rest }, value ?? "") : h("input", { id, name: id, ...attrs });
    return [h("label", { for: id }, label), input, h("p", { class: "field-error", id: `${id}-error` })];
  };
  const form = h("form", { class: "card", novalidate: true },
    h("h2", {}, t("deploy.form")),
    field("name", t("deploy.name"), { required: true, placeholder: "web-portal" }),
    h("label", { for: "vdc" }, t("deploy.vdc")),
    h("select", { id: "vdc", name: "vdc" }, vdcList.map((v) => h("option", { value: v.path }, v.path))),
    h("p", { class: "field-error", id: "vdc-error" }),
    field("component", t("deploy.component"), { value: "web" }),
    field("replicas", t("deploy.replicas"), { type: "number", value: 2, min: 0 }),
    field("cpu", t("deploy.cpu"), { value: "0.1" }),
    field("memory", t("deploy.memory"), { value: "64Mi" }),
    field("command", t("deploy.command"), { rows: 3, value: "python3\n-m\nhttp.server\n${PORT}\n--bind\n${ADDRESS}" }),
    field("image", t("deploy.image"), {}),
    field("port", t("deploy.port"), { type: "number", value: 8080 }),
    field("tags", t("deploy.tags"), { placeholder: "level=city" }),
    h("p", { class: "error", role: "alert", id: "deploy-error" }),
    h("button", { class: "primary", type: "submit" }, t("deploy.submit")));
  const json = h("form", { class: "card" },
    h("label", { for: "document" }, t("deploy.json")),
    h("textarea", { id: "document", name: "document", spellcheck: "false", rows: 14 }, TEMPLATE),
    h("p", { class: "error", role: "alert", id: "document-error" }),
    h("button", { class: "primary", type: "submit" }, t("deploy.submit")));
  main.replaceChildren(h("h1", {}, t("deploy.title")), form, json);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = (id) => form.elements[id].value.trim();
    const component = { name: v("component"), replicas: Number(v("replicas")), resources: { cpu: v("cpu"), memory: v("memory") } };
    const command = v("command").split("\n").map((s) => s.trim()).filter(Boolean);
    if (command.length) component.run = { command };
    if (v("image")) component.image = v("image");
    if (v("port")) component.ports = [{ name: "http", port: Number(v("port")) }];
    const doc = { apiVersion: "shanzhi.io/v1", kind: "App", metadata: { name: v("name"), vdc: v("vdc") }, spec: { components: [component] } };
    if (v("tags")) {
      const tags = Object.fromEntries(v("tags").split(",").map((kv) => kv.split("=").map((s) => s.trim())));
      doc.spec.placement = { clouds: { tags } };
    }
    await submit(doc, form, "deploy-error", ctx);
  });
  json.addEventListener("submit", async (event) => {
    event.preventDefault();
    await submit(json.elements.document.value, json, "document-error", ctx);  // the server reads the YAML
  });
}

const TEMPLATE = `apiVersion: shanzhi.io/v1
kind: App
metadata:
  name: web-portal
  vdc: gz
spec:
  components:
    - name: web
      replicas: 2
      resources: {cpu: "0.1", memory: 64Mi}
      run:
        command: [python3, -m, http.server, "\${PORT}", --bind, "\${ADDRESS}"]
      ports: [{name: http, port: 8080}]
`;

async function submit(doc, form, errorId, ctx) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  form.querySelector(`#${errorId}`).textContent = "";
  try {
    const out = await post("/apps", doc);
    ctx.toast(out.outcome === "held" ? t("deploy.held") : `${t("deploy.done")}: ${out.outcome}`);
    location.hash = out.app ? `#/app/${q(out.app.vdc)}/${q(out.app.name)}` : "#/approvals";
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    let placed = false;
    for (const e of err.errors) {
      const id = FIELDS[(e.field || "").replace(/^body\./, "").replace(/\.(\d+)(?=\.|$)/g, "[$1]")];
      const input = id && form.elements[id];
      if (input) {
        input.setAttribute("aria-invalid", "true");
        form.querySelector(`#${id}-error`).textContent = e.message;
        placed = true;
      }
    }
    // no field of a form to put them on (the document editor): every problem, each with its path
    form.querySelector(`#${errorId}`).textContent = placed || err.errors.length < 2
      ? err.message : err.errors.map((e) => `${e.field}: ${e.message}`).join("\n");
    if (placed) form.querySelector("[aria-invalid]").focus();
  }
}

export async function approvals(main, ctx) {
  const rows = await get("/approvals");
  const act = (r, verb) => h("button", { class: "act", type: "button", onclick: async () => {
    try { await post(`/approvals/${r.id}/${verb}`, { comment: "" }); ctx.toast(`#${r.id} ${t(verb)}`); } catch (err) { ctx.toast(err.message); }
    approvals(main, ctx);
  } }, t(verb));
  main.replaceChildren(h("h1", {}, t("approvals.title")), rows.length ? table([
    [t("col.id"), (r) => r.id], [t("col.vdc"), (r) => r.vdc], [t("col.name"), (r) => r.app], [t("col.action"), (r) => r.action],
    [t("col.requested"), (r) => r.requester], [t("col.stage"), (r) => `${r.stage + 1}/${r.stages.length}`],
    [t("col.status"), (r) => stateCell(r.status)], [t("col.reason"), (r) => (r.reasons || []).map((x) => x.why ?? x).join("; ")],
    [t("col.actions"), (r) => r.status === "pending" ? [act(r, "approve"), act(r, "reject")] : r.outcome ?? ""],
  ], rows) : h("p", {}, t("none")));
}

export async function bill(main) {
  const to = new Date();
  const from = new Date(to.getFullYear(), to.getMonth(), 1);
  const out = await api("GET", `/bill?from=${q(from.toISOString())}&to=${q(to.toISOString())}`);
  const lines = out.lines || out.vdcs || [];
  main.replaceChildren(h("h1", {}, t("bill.title")), h("p", { class: "muted" }, `${when(from)} – ${when(to)}`),
    lines.length ? table(Object.keys(lines[0]).map((k) => [k, (r) => typeof r[k] === "object" ? JSON.stringify(r[k]) : fmt(r[k])]), lines)
      : h("pre", {}, JSON.stringify(out, null, 2)));
}
