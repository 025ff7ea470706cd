// The auditor's views: the audit trail (paged by the server, verified on demand) and the
// directory ledger, whose inclusion proofs this page checks itself: SHA-256 and Ed25519 from
// the browser's WebCrypto, the log key pinned at first sight in this browser.
import { get } from "./api.js";
import { h, table, when } from "./dom.js";
import { t } from "./i18n.js";

const PAGE = 100;
let filters = {};  // kept while paging; the form sets them
let shownAfter = "";  // the "from" field as typed (the browser's local time)

export async function trail(main, ctx) {
  const since = Number(ctx.args[0] || 0);
  const query = new URLSearchParams({ since, limit: PAGE, ...filters });
  const rows = await get(`/audit?${query}`);
  const field = (id, label, input) => [h("label", { for: `audit-${id}` }, label), input];
  const form = h("form", { class: "filters", "aria-label": t("audit.filter") },
    ...field("actor", t("audit.actor"), h("input", { id: "audit-actor", name: "actor", value: filters.actor ?? "" })),
    ...field("path", t("audit.path"), h("input", { id: "audit-path", name: "path", value: filters.path ?? "", placeholder: "/api/v1/apps" })),
    ...field("outcome", t("audit.outcome"), h("select", { id: "audit-outcome", name: "outcome" },
      ["", "success", "denied", "error"].map((o) => h("option", { value: o, selected: (filters.outcome ?? "") === o ? true : null }, o || t("audit.any"))))),
    ...field("after", t("audit.after"), h("input", { id: "audit-after", name: "after", type: "datetime-local", value: shownAfter })),
    h("button", { type: "submit" }, t("audit.filter")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const v = (id) => form.elements[id].value.trim();
    const local = v("after");  // the browser's own time: sent with its zone
    filters = Object.fromEntries(Object.entries({
      actor: v("actor"), path: v("path"), outcome: v("outcome"), after: local ? new Date(local).toISOString() : "",
    }).filter(([, x]) => x));
    shownAfter = local;
    if (location.hash === "#/audit") trail(main, { ...ctx, args: [] }); else location.hash = "#/audit";
  });
  const result = h("p", { role: "status", id: "verify-result" });
  const verify = h("button", { class: "primary", type: "button", onclick: async () => {
    const report = await get("/audit/verify");
    result.className = report.ok ? "verified" : "error";
    result.textContent = report.ok ? `${t("audit.verified")}: ${report.records}` : report.problem;
  } }, t("audit.verify"));
  const last = rows.length ? rows[rows.length - 1].id : since;
  main.replaceChildren(h("h1", {}, t("audit.title")), form, verify, result, table([
    [t("col.id"), (r) => r.id], [t("col.time"), (r) => when(r.at)], [t("col.user"), (r) => r.actor],
    [t("col.action"), (r) => `${r.method ?? ""} ${r.path ?? r.action ?? ""}`], [t("col.object"), (r) => r.target ?? ""],
    [t("col.result"), (r) => r.status ?? r.outcome ?? ""],
  ], rows), rows.length === PAGE ? h("a", { href: `#/audit/${last}` }, "→") : null);
}

const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const concat = (...parts) => { const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0)); let i = 0; for (const p of parts) { out.set(p, i); i += p.length; } return out; };
const sha256 = async (data) => new Uint8Array(await crypto.subtle.digest("SHA-256", data));
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// RFC 9162 §2.1.3.2: the root a leaf's inclusion proof leads to.
async function rootFrom(index, size, leaf, proof) {
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(concat([1], p, r));
      if (fn % 2 === 0) while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await sha256(concat([1], r, p));
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

// A C2SP signed note: the body, and the log's Ed25519 signature line checked with its key.
async function checkNote(note, vkey) {
  const first = vkey.indexOf("+"), second = vkey.indexOf("+", first + 1);  // the key's base64 may hold '+'
  const [name, hash, keyB64] = [vkey.slice(0, first), vkey.slice(first + 1, second), vkey.slice(second + 1)];
  const key = bytes(keyB64);
  if (key[0] !== 1) throw new Error("the log key is not an Ed25519 key");
  const split = note.indexOf("\n\n");
  const body = note.slice(0, split + 1);
  const line = note.slice(split + 2).split("\n").find((l) => l.startsWith(`— ${name} `));
  if (!line) throw new Error(`the checkpoint has no signature by ${name}`);
  const sig = bytes(line.split(" ")[2]);
  const id = Array.from(sig.slice(0, 4), (b) => b.toString(16).padStart(2, "0")).join("");
  if (id !== hash) throw new Error("the signature is by another key");
  const publicKey = await crypto.subtle.importKey("raw", key.slice(1), { name: "Ed25519" }, false, ["verify"]);
  const ok = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, sig.slice(4), new TextEncoder().encode(body));
  if (!ok) throw new Error("the checkpoint's signature does not verify");
  const [, size, root] = body.split("\n");
  return { size: Number(size), root: bytes(root) };
}

export async function ledger(main) {
  const status = await get("/ledger/status");
  const pinKey = `shanzhi.ledger.${status.origin}`;
  const pinned = localStorage.getItem(pinKey) || status.log_key;
  localStorage.setItem(pinKey, pinned);
  const result = h("p", { role: "status", id: "proof-result" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    result.className = "";
    result.textContent = t("loading");
    try {
      const note = await (await fetch("/api/v1/ledger/checkpoint", { credentials: "same-origin" })).text();
      const cp = await checkNote(note, pinned);
      const index = Number(form.elements.index.value);
      const proof = await get(`/ledger/proof/inclusion?index=${index}&size=${cp.size}`);
      const entry = await get(`/ledger/entries/${index}`);
      const leaf = await sha256(concat([0], new TextEncoder().encode(entry.entry)));
      const root = await rootFrom(index, cp.size, leaf, proof.proof.map(bytes));
      const ok = root !== null && equal(root, cp.root);
      result.className = ok ? "verified" : "error";
      result.textContent = `${ok ? t("ledger.included") : t("ledger.notIncluded")} (${index} / ${cp.size}). ${t("ledger.signature")}.`;
    } catch (err) {
      result.className = "error";
      result.textContent = err.message;
    }
  } },
  h("label", { for: "index" }, t("ledger.entry")),
  h("input", { id: "index", name: "index", type: "number", min: 0, value: Math.max(0, (status.size || 1) - 1) }),
  h("button", { class: "primary", type: "submit" }, t("ledger.check")));
  main.replaceChildren(h("h1", {}, t("ledger.title")),
    table([["", (r) => r[0]], ["", (r) => r[1]]], [["origin", status.origin], ["size", status.size],
      ["log key (pinned)", pinned], [t("ledger.checkpoint"), h("pre", {}, status.checkpoint ?? "—")]]),
    pinned !== status.log_key ? h("p", { class: "error", role: "alert" }, `the server now names another log key: ${status.log_key}`) : null,
    form, result);
}

