// The security administrator's views (users, grants) and everyone's own tokens.
import { api, get, post, q } from "./api.js";
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
