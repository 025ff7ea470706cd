// The console: sign-in, a menu by role, and one view per hash route (#/apps, #/audit, ...).
import { ApiError, get, post } from "./api.js";
import { h } from "./dom.js";
import { lang, t, toggle } from "./i18n.js";
import * as ops from "./ops.js";
import * as dept from "./dept.js";
import * as sec from "./security.js";
import * as audit from "./audit.js";

const VIEWS = {
  overview: ops.overview, clouds: ops.clouds, events: ops.events, alarms: ops.alarms, plans: ops.plans,
  vdcs: dept.vdcs, apps: dept.apps, app: dept.app, deploy: dept.deploy, approvals: dept.approvals, bill: dept.bill,
  users: sec.users, grants: sec.grants, sso: sec.sso, tokens: sec.tokens,
  audit: audit.trail, ledger: audit.ledger,
};

// What each role finds in the menu (the API still decides what each view may show).
function menu(me) {
  const platform = new Set(me.platform_roles);
  const items = [];
  if (platform.has("system-admin")) items.push("overview", "clouds", "plans", "alarms", "events");
  if (platform.has("system-admin") || me.vdc_roles.length) items.push("vdcs", "apps", "deploy", "approvals", "bill");
  if (!platform.has("system-admin") && me.vdc_roles.length) items.push("events", "alarms");
  if (platform.has("security-admin")) items.push("users", "grants", "sso");
  if (platform.has("audit-admin")) items.push("audit");
  if (platform.size) items.push("ledger");
  items.push("tokens");
  return [...new Set(items)];
}

let me = null;
let timer = null;
let navigation = 0;  // a view still loading when another route starts must not draw over it

function chrome() {
  document.documentElement.lang = lang;
  document.getElementById("lang").textContent = t("lang.switch");
  const out = document.getElementById("logout");
  out.textContent = t("logout");
  out.hidden = !me;
  document.getElementById("who").textContent = me ? me.user : "";
  const nav = document.getElementById("nav");
  const current = (location.hash.slice(2).split("/")[0]) || "";
  nav.replaceChildren(...(me ? menu(me) : []).map((item) =>
    h("a", { href: `#/${item}`, "aria-current": item === current ? "page" : null }, t(`nav.${item}`))));
}

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  setTimeout(() => { if (el.textContent === message) el.textContent = ""; }, 4000);
}

async function route() {
  clearInterval(timer);
  chrome();
  const main = document.getElementById("main");
  if (!me) return login(main);
  const [name, ...args] = location.hash.slice(2).split("/").map(decodeURIComponent);
  const view = VIEWS[name] || VIEWS[menu(me)[0]];
  const seq = ++navigation;
  const box = h("div", {}, h("p", { class: "loading" }, t("loading")));  // this route's own: a stale one is detached
  main.replaceChildren(box);
  const ctx = {
    me, args, toast, refresh: route, fresh: true,
    every(seconds, fn) {
      if (seq !== navigation) return;
      clearInterval(timer);
      timer = setInterval(fn, seconds * 1000);
    },
  };
  try {
    await view(box, ctx);
  } catch (err) {
    const text = err instanceof ApiError && err.status === 403 ? `${t("forbidden")} ${err.message}` : err.message;
    box.replaceChildren(h("p", { class: "error", role: "alert" }, text));
  }
}

function login(main) {
  const error = h("p", { class: "error", role: "alert" });
  const otp = h("div", { hidden: true },
    h("p", {}, t("login.otpNeeded")),
    h("label", { for: "otp" }, t("login.otp")),
    h("input", { id: "otp", name: "otp", inputmode: "numeric", autocomplete: "one-time-code" }));
  const form = h("form", { class: "card login", onsubmit: submit },
    h("h1", {}, t("login.title")),
    h("label", { for: "user" }, t("login.user")),
    h("input", { id: "user", name: "user", autocomplete: "username", required: true }),
    h("label", { for: "password" }, t("login.password")),
    h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true }),
    otp, error,
    h("button", { class: "primary", type: "submit" }, t("login.submit")));
  main.replaceChildren(form);
  form.user.focus();
  get("/auth/oidc").then((sso) => {
    if (!sso.enabled) return;
    form.append(h("p", { class: "muted" }, t("login.or")),
      h("button", { class: "primary", type: "button", id: "sso", onclick: singleSignOn }, `${t("login.sso")} ${sso.name || sso.issuer}`));
  }).catch(() => {});

  async function submit(event) {
    event.preventDefault();
    error.textContent = "";
    const body = { user: form.user.value, password: form.password.value, cookie: true };
    if (!otp.hidden && form.otp.value) body.otp = form.otp.value.trim();
    try {
      const session = await post("/auth/login", body);
      if (session.restricted) {
        enrol(main);
        return;
      }
      me = await get("/auth/whoami");
      location.hash = `#/${menu(me)[0]}`;
      route();
    } catch (err) {
      if (err.field === "otp" && otp.hidden) {
        otp.hidden = false;
        form.otp.focus();
        return;
      }
      error.textContent = err.message;
    }
  }
}

// A session that owes a second factor may only enrol one: show the QR code, take a first code,
// show the recovery codes once, then sign in again with a code.
async function enrol(main) {
  const started = await post("/auth/mfa/enroll");
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "card login", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const done = await post("/auth/mfa/confirm", { code: form.code.value.trim() });
      main.replaceChildren(h("div", { class: "card login" },
        h("h1", {}, t("mfa.done")), h("p", {}, t("mfa.recovery")),
        h("pre", { id: "recovery" }, done.recovery_codes.join("\n")),
        h("button", { class: "primary", type: "button", onclick: () => login(main) }, t("mfa.again"))));
    } catch (err) { error.textContent = err.message; }
  } },
  h("h1", {}, t("mfa.title")), h("p", {}, t("login.restricted")),
  h("img", { src: started.qr, alt: t("mfa.qr"), width: 148, height: 148 }),
  h("p", {}, t("mfa.secret"), " ", h("code", { id: "mfa-secret" }, started.secret)),
  h("label", { for: "code" }, t("login.otp")),
  h("input", { id: "code", name: "code", inputmode: "numeric", autocomplete: "one-time-code", required: true }),
  error, h("button", { class: "primary", type: "submit" }, t("mfa.confirm")));
  main.replaceChildren(form);
  form.code.focus();
}

// Single sign-on: the code-flow handoff of the CLI, with this page as the place the code comes back
// to. The verifier stays in this tab (sessionStorage); only its challenge goes to the server.
const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

async function singleSignOn() {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(48)));
  const challenge = b64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier))));
  sessionStorage.setItem("shanzhi.sso", verifier);
  const begun = await post("/auth/oidc/start", { challenge, return_to: `${location.origin}/` });
  location.assign(begun.authorization_url);
}

async function finishSingleSignOn(main) {
  const params = new URLSearchParams(location.search);
  history.replaceState(null, "", "/");  // the code works once: not in the history, not in a reload
  const verifier = sessionStorage.getItem("shanzhi.sso");
  sessionStorage.removeItem("shanzhi.sso");
  if (params.get("error") || !verifier) {
    login(main);
    main.querySelector("form.login .error").textContent = params.get("error") || t("login.ssoLost");
    return;
  }
  const exchange = async (otp) => post("/auth/oidc/exchange", { code: params.get("code"), verifier, cookie: true, otp });
  try {
    await exchange();
  } catch (err) {
    if (err.field !== "otp") throw err;
    const code = await askCode(main);  // the handoff stays valid while the second factor is owed
    await exchange(code);
  }
}

function askCode(main) {
  return new Promise((resolve) => {
    const form = h("form", { class: "card login", onsubmit: (e) => { e.preventDefault(); resolve(form.otp.value.trim()); } },
      h("p", {}, t("login.otpNeeded")), h("label", { for: "otp" }, t("login.otp")),
      h("input", { id: "otp", name: "otp", inputmode: "numeric", autocomplete: "one-time-code" }),
      h("button", { class: "primary", type: "submit" }, t("login.submit")));
    main.replaceChildren(form);
    form.otp.focus();
  });
}

async function start() {
  document.getElementById("lang").addEventListener("click", () => { toggle(); route(); });
  document.getElementById("logout").addEventListener("click", async () => {
    try { await post("/auth/logout"); } finally { me = null; location.hash = ""; route(); }
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("shanzhi:signed-out", () => { if (me) { me = null; route(); } });
  if (new URLSearchParams(location.search).has("state")) {
    try { await finishSingleSignOn(document.getElementById("main")); } catch (err) {
      login(document.getElementById("main"));
      document.querySelector("form.login .error").textContent = err.message;
      return;
    }
  }
  try { me = await get("/auth/whoami"); } catch { me = null; }
  if (me && me.restricted) me = null;
  route();
}

start();
