"""`shanzhi mfa ...`: your second factor (TOTP), and the prompt for its code at login."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segno
import typer

from shanzhi.cli.output import Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import ApiError, Client, discover_token

mfa_app = typer.Typer(help="Your second factor: an authenticator app's 6-digit codes.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")
CodeOpt = typer.Option(None, "--code", envvar="SHANZHI_OTP", help="A code from the app (asked for if not given).")


def owed(e: ApiError) -> bool:
    """Is this the server saying the login still owes its second factor?"""
    return e.status == 401 and e.problem.get("field") == "otp" and e.problem.get("title") == "Second factor required"


def with_code(call: Callable[[str | None], Any], otp: str | None) -> Any:
    """Call with `otp`; if the server says a code is owed, ask for one (at a terminal) and call again."""
    try:
        return call(otp)
    except ApiError as e:
        if otp is not None or not owed(e):
            raise
        code = os.environ.get("SHANZHI_OTP")
        if not code:
            if not sys.stdin.isatty():
                raise
            code = str(typer.prompt("Code from your authenticator app (or a recovery code)", err=True))
        return call(code.strip())


def _ask(code: str | None, prompt: str) -> str:
    return code if code is not None else str(typer.prompt(prompt, err=True)).strip()


@mfa_app.command("enroll")
def enroll(
    code: str | None = CodeOpt,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Add an authenticator app: scan the QR code (or type the secret), then give its first code.
    The recovery codes are shown this once: keep them somewhere safe."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        started = c.mfa_enroll()
        if output is not Fmt.json:
            qr = segno.make(started["uri"], error="m")
            qr.terminal(out=sys.stderr, compact=True)
            err.print(f"Secret (if you cannot scan): [bold]{started['secret']}[/]")
        done = c.mfa_confirm(_ask(code, "Code from the app"))
    if output is Fmt.json:
        emit(
            {"user": done["user"], "mfa": True, "recovery_codes": done["recovery_codes"], "uri": started["uri"]}, output
        )
        return
    out.print(f"Second factor on for {done['user']}. Recovery codes (each works once; shown only now):")
    for rc in done["recovery_codes"]:
        out.print(f"  {rc}")
    out.print("Log in again: 'shanzhi login' now asks for a code.")


@mfa_app.command("disable")
def disable(code: str | None = CodeOpt, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Turn your second factor off (needs a current code or a recovery code; not allowed where
    one is required, as for the platform roles)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.mfa_disable(_ask(code, "Code from the app (or a recovery code)")), output)
