// The security administrator's views (users, grants, single sign-on group maps) and everyone's own tokens.
import { ApiError, api, get, post, q } from "./api.js";
import { h, table, when } from "./dom.js";
import { t } from "./i18n.js";

export async function users(main, ctx) {
  const rows = await get("/users");
  const act = (u, verb) => h("button", { class: "act", type: "button", onclick: async () => {
    try { await post(`/users/${q(u.name)}/${verb}`); ctx.toast(`${u.name}: ${t(verb)}`); } catch (err) { ctx.toast(err.message); }
    users(main, ctx);
  } }, t(verb));
  main.replaceChildren(h("h1", {}, t("users.title")), table([
    [t("col.user"), (u) => u.name], [t("col.locked"), (u) => (u.locked ? t("yes") : t("no"))],
    [t("col.mfa"), (u) => (u.mfa ? t("yes") : t("no"))], [t("col.time"), (u) => when(u.last_login_at)],
    [t("col.actions"), (u) => (u.locked ? act(u, "unlock") : act(u, "lock"))],
  ], rows));
}

export async function grants(main) {
  const rows = await get("/grants");
  main.replaceChildren(h("h1", {}, t("grants.title")), table([
    [t("col.id"), (g) => g.id], [t("col.user"), (g) => g.user], [t("col.role"), (g) => g.role],
    [t("col.vdc"), (g) => g.vdc ?? "—"], [t("col.requested"), (g) => g.by ?? ""],
  ], rows));
}

export async function tokens(main, ctx) {
  const rows = await get("/tokens");
  main.replaceChildren(h("h1", {}, t("tokens.title")), table([
    [t("col.id"), (k) => k.id], [t("col.name"), (k) => k.name], [t("col.time"), (k) => when(k.last_used_at)],
    [t("col.expires"), (k) => when(k.expires_at)],
    [t("col.actions"), (k) => k.revoked_at ? when(k.revoked_at) : h("button", { class: "act", type: "button", onclick: async () => {
      await api("DELETE", `/tokens/${k.id}`); tokens(main, ctx);
    } }, t("revoke"))],
  ], rows));
}

const ROLES = ["member", "viewer", "vdc-admin", "system-admin", "security-admin", "audit-admin"];

// Which of the identity provider's groups give which role (and where) at single sign-on.
export async function sso(main, ctx) {
  const rows = await get("/oidc-group-maps");
  const form = h("form", { class: "card", "aria-label": t("sso.add") },
    h("label", { for: "sso-group" }, t("sso.group")), h("input", { id: "sso-group", name: "group", required: true }),
    h("label", { for: "sso-role" }, t("col.role")), h("select", { id: "sso-role", name: "role" }, ROLES.map((r) => h("option", { value: r }, r))),
    h("label", { for: "sso-vdc" }, t("col.vdc")), h("input", { id: "sso-vdc", name: "vdc", placeholder: "gz/health" }),
    h("p", { class: "error", role: "alert", id: "sso-error" }),
    h("button", { class: "primary", type: "submit" }, t("sso.add")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = (id) => form.elements[id].value.trim();
    try {
      await post("/oidc-group-maps", { group: v("group"), role: v("role"), vdc: v("vdc") || null });
      sso(main, ctx);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      form.querySelector("#sso-error").textContent = err.message;
    }
  });
  const remove = (m) => h("button", { class: "act", type: "button", onclick: async () => {
    try { await api("DELETE", `/oidc-group-maps/${m.id}`); } catch (err) { ctx.toast(err.message); }
    sso(main, ctx);
  } }, t("remove"));
  main.replaceChildren(h("h1", {}, t("sso.title")), rows.length ? table([
    [t("col.id"), (m) => m.id], [t("sso.group"), (m) => m.group], [t("col.role"), (m) => m.role],
    [t("col.vdc"), (m) => m.vdc ?? "—"], [t("col.requested"), (m) => m.by], [t("col.actions"), remove],
  ], rows) : h("p", {}, t("none")), form);
}
