"""`shanzhi login|logout|whoami|passwd`, `shanzhi user ...`, `shanzhi token ...`, `shanzhi grant ...`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from shanzhi.cli import sso
from shanzhi.cli.mfa import with_code
from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import ApiError, Client, discover_token, save_credentials, server_url
from shanzhi.config import default_data_dir

user_app = typer.Typer(help="Users (security administrators).", no_args_is_help=True)
token_app = typer.Typer(help="Your API tokens (security administrators: everyone's).", no_args_is_help=True)
sso_app = typer.Typer(help="Single sign-on: roles from the provider's groups.", no_args_is_help=True)
grant_app = typer.Typer(help="Roles of users: platform roles and VDC roles.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")
UrlOpt = typer.Option(None, "--url", envvar="SHANZHI_URL", help="Server URL (default http://127.0.0.1:8700).")

USER_COLS: Columns = [
    ("NAME", lambda r: r["name"]),
    ("DISPLAY NAME", lambda r: r["display_name"]),
    ("PASSWORD", lambda r: "set" if r["password"] else "-"),
    (
        "LOCKED",
        lambda r: "yes" if r["locked"] else (f"until {str(r['locked_until'])[:19]}" if r["locked_until"] else ""),
    ),
    ("SSO", lambda r: "linked" if r.get("oidc_subject") else "-"),
    ("LAST LOGIN", lambda r: str(r["last_login_at"] or "")[:19]),
]
TOKEN_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("USER", lambda r: r["user"]),
    ("NAME", lambda r: r["name"]),
    ("EXPIRES", lambda r: str(r["expires_at"] or "never")[:19]),
    ("REVOKED", lambda r: str(r["revoked_at"] or "")[:19]),
    ("LAST USED", lambda r: str(r["last_used_at"] or "")[:19]),
]
GROUP_MAP_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("GROUP", lambda r: r["group"]),
    ("ROLE", lambda r: r["role"]),
    ("VDC", lambda r: r["vdc"] or "(platform)"),
    ("BY", lambda r: r["by"]),
]
GRANT_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("USER", lambda r: r["user"]),
    ("ROLE", lambda r: r["role"]),
    ("VDC", lambda r: r["vdc"] or "(platform)"),
    ("BY", lambda r: r["by"]),
]


def _client(data_dir: Path | None, url: str | None = None) -> Client:
    return Client(url, token=discover_token(data_dir, url=url))


def _password(given: str | None, prompt: str, confirm: bool = False) -> str:
    if given is not None:
        return given
    env = os.environ.get("SHANZHI_PASSWORD")
    if env:
        return env
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True))


# ------------------------------------------------------------------ session
def login(
    user: str | None = typer.Option(None, "--user", "-u", help="Your user name (asked for if not given)."),
    password: str | None = typer.Option(
        None, "--password", help="Prefer the prompt or $SHANZHI_PASSWORD: arguments show up in 'ps'."
    ),
    new_password: str | None = typer.Option(
        None,
        "--new-password",
        envvar="SHANZHI_NEW_PASSWORD",
        help="Replace your password as you log in (needed once it has expired; asked for at a terminal).",
    ),
    oidc: bool = typer.Option(False, "--oidc", "--sso", help="Log in through the server's single sign-on provider."),
    browser: bool = typer.Option(
        True, "--browser/--no-browser", help="With --oidc: open a browser here, or print the address and ask the code."
    ),
    timeout: float = typer.Option(300, "--timeout", help="With --oidc: seconds to wait for the browser."),
    otp: str | None = typer.Option(
        None, "--otp", envvar="SHANZHI_OTP", help="Your second factor's code (asked for at a terminal when owed)."
    ),
    url: str | None = UrlOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Log in with your password, or through single sign-on (--oidc); the session token is
    saved for this server (mode 0600)."""
    with handle_errors(), Client(url) as c:
        if oidc:
            try:
                t = sso.login(c, browser=browser, timeout=timeout)
            except sso.LoginFailed as e:
                err.print(f"[red]error[/]: {e}")
                raise typer.Exit(1) from None
        else:
            name = user if user is not None else str(typer.prompt("User", err=True))
            secret = _password(password, "Password")
            try:
                t = with_code(lambda code: c.login(name, secret, new_password, code), otp)
            except ApiError as e:
                expired = e.status == 403 and "has expired" in str(e.problem.get("detail", ""))
                if not (expired and new_password is None and sys.stdin.isatty()):
                    raise
                err.print(f"[yellow]{e.problem['detail']}[/]")
                new = typer.prompt("New password", hide_input=True, confirmation_prompt=True, err=True)
                t = with_code(lambda code: c.login(name, secret, str(new), code), otp)
    path = save_credentials(server_url(url), t["token"])
    if output is Fmt.json:
        emit({k: v for k, v in t.items() if k != "token"} | {"saved_to": str(path)}, output)
    else:
        out.print(f"Logged in to {server_url(url)} as {t['user']} until {str(t['expires_at'])[:19]} UTC")
    if t.get("restricted"):
        err.print(
            f"[yellow]{t['user']} needs a second factor: this session can only enrol one. Run 'shanzhi mfa enroll'.[/]"
        )


def logout(url: str | None = UrlOpt, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Revoke the saved session token and forget it."""
    with handle_errors(), _client(data_dir, url) as c:
        r = c.logout()
    save_credentials(server_url(url), None)
    fallback = (data_dir or default_data_dir()) / "admin.token"
    falls_back = not os.environ.get("SHANZHI_TOKEN") and fallback.is_file() and os.access(fallback, os.R_OK)
    if output is Fmt.json:
        emit(r | {"now_using": str(fallback) if falls_back else None}, output)
    else:
        out.print("Logged out")
        if falls_back:
            out.print(
                f"Commands here now use {fallback} (the system administrator); 'shanzhi login' to be you again",
                soft_wrap=True,
            )


def whoami(url: str | None = UrlOpt, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Who the current token belongs to, and their roles."""
    with handle_errors(), _client(data_dir, url) as c:
        me = c.whoami()
    if output is Fmt.json:
        emit(me, output)
        return
    roles = me["platform_roles"] + [f"{r['role']}@{r['vdc']}" for r in me["vdc_roles"]]
    out.print(f"{me['user']}: {', '.join(roles) or '(no roles)'}")


def passwd(
    password: str | None = typer.Option(None, "--password", help="New password (default: prompt)."),
    old_password: str | None = typer.Option(None, "--old-password", help="Current password (default: prompt)."),
    url: str | None = UrlOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Change your own password."""
    old = old_password
    if old is None:
        old = str(typer.prompt("Current password", hide_input=True, default="", err=True))
    new = _password(password, "New password", confirm=True)
    with handle_errors(), _client(data_dir, url) as c:
        emit(c.change_password(new, old or None), output)


# ------------------------------------------------------------------ users
@user_app.command("list")
def user_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """List users."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_users(), output, USER_COLS)


@user_app.command("get")
def user_get(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show a user and their roles."""
    with handle_errors(), _client(data_dir) as c:
        u = c.get_user(name)
    if output is Fmt.json:
        emit(u, output)
        return
    emit(u, output, USER_COLS)
    emit(u["roles"], output, GRANT_COLS)


@user_app.command("create")
def user_create(
    name: str,
    display_name: str = typer.Option("", "--display-name", help="Full name."),
    password: str | None = typer.Option(None, "--password", help="Initial password (default: prompt)."),
    no_password: bool = typer.Option(False, "--no-password", help="No password: single sign-on or tokens only."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Create a user (then give them roles with 'shanzhi grant add')."""
    secret = None if no_password else _password(password, "Password", confirm=True)
    with handle_errors(), _client(data_dir) as c:
        emit(c.create_user(name, secret, display_name), output, USER_COLS)


@user_app.command("passwd")
def user_passwd(
    name: str,
    password: str | None = typer.Option(None, "--password", help="New password (default: prompt)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Reset a user's password (also clears a lock-out after failed logins)."""
    secret = _password(password, "New password", confirm=True)
    with handle_errors(), _client(data_dir) as c:
        emit(c.reset_password(name, secret), output, USER_COLS)


@user_app.command("lock")
def user_lock(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Lock a user out: their tokens stop working at once."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.lock_user(name, True), output, USER_COLS)


@user_app.command("unlock")
def user_unlock(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Unlock a user (and clear failed-login lock-outs)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.lock_user(name, False), output, USER_COLS)


@user_app.command("unlink-sso")
def user_unlink_sso(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Forget the single sign-on identity linked to a user (their next SSO login links again by name)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.unlink_oidc(name), output, USER_COLS)


@user_app.command("reset-mfa")
def user_reset_mfa(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Remove a user's second factor (a lost phone): their sessions end; the next login enrols anew."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.reset_mfa(name), output)


@user_app.command("delete")
def user_delete(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Delete a user, their tokens and grants (their audit records stay)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.delete_user(name), output, [("NAME", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])])


# ------------------------------------------------------------------ tokens
@token_app.command("list")
def token_list(
    user: str | None = typer.Option(None, "--user", help="Another user's tokens (security administrators)."),
    all_users: bool = typer.Option(False, "--all", help="Everyone's tokens (security administrators)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """List API tokens (never their secrets)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_tokens(user, all_users), output, TOKEN_COLS)


@token_app.command("create")
def token_create(
    name: str,
    expires_in_days: float = typer.Option(
        90, "--expires-in-days", help="Lifetime in days (at most the server's --token-max-days, 365 by default)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Create an API token for yourself. The secret is shown once: keep it safe."""
    with handle_errors(), _client(data_dir) as c:
        t = c.create_token(name, expires_in_days)
    if output is Fmt.json:
        emit(t, output)
        return
    out.print(t["token"])
    err.print(f"token {t['id']} ({t['name']}) expires {str(t['expires_at'])[:19]} UTC; it is not shown again")


@token_app.command("revoke")
def token_revoke(token_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Revoke a token: it stops working at once."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.revoke_token(token_id), output, TOKEN_COLS)


# ------------------------------------------------------------------ grants
@grant_app.command("list")
def grant_list(
    user: str | None = typer.Option(None, "--user", help="Only this user's."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """List role grants you may see."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_grants(user), output, GRANT_COLS)


@grant_app.command("add")
def grant_add(
    user: str,
    role: str = typer.Argument(
        ..., help="system-admin, security-admin, audit-admin (platform) or vdc-admin, member, viewer (with --vdc)"
    ),
    vdc: str | None = typer.Option(None, "--vdc", help="The VDC a VDC role holds on (and its whole subtree)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Give a user a role."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.grant(user, role, vdc), output, GRANT_COLS)


@grant_app.command("remove")
def grant_remove(grant_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Take a role away (see the ids in 'shanzhi grant list')."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.revoke_grant(grant_id), output, GRANT_COLS)


# ------------------------------------------------------------------ single sign-on groups
@sso_app.command("list")
def sso_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Which provider groups give which roles (security administrators)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.group_maps(), output, GROUP_MAP_COLS)


@sso_app.command("map")
def sso_map(
    group: str = typer.Argument(..., help="The group's name, as the provider sends it."),
    role: str = typer.Argument(..., help="system-admin, security-admin, audit-admin, vdc-admin, member or viewer."),
    vdc: str | None = typer.Option(None, "--vdc", help="The VDC a VDC role holds on (and its whole subtree)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Give members of a provider group a role at their next single sign-on login."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.add_group_map(group, role, vdc), output, GROUP_MAP_COLS)


@sso_app.command("unmap")
def sso_unmap(map_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Remove a group map and the grants it gave."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.remove_group_map(map_id), output, GROUP_MAP_COLS)
