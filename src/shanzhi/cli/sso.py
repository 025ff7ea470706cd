"""`shanzhi login --oidc`: single sign-on from a terminal.

The CLI keeps a random verifier and starts the login with its challenge. It then waits for the
one-time code at a loopback address (a one-shot HTTP listener on 127.0.0.1 that the server's
callback redirects the browser to), or, with --no-browser, asks for the code the browser shows:
for a jump host without a browser of its own. Code and verifier buy a session token; the code
alone is worth nothing to whoever sees it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import secrets
import sys
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import typer

from shanzhi.cli.mfa import with_code
from shanzhi.cli.output import err
from shanzhi.client import Client


class LoginFailed(Exception):
    """The login did not finish: refused, timed out, or single sign-on is off."""


class _Receiver:
    """A one-shot HTTP listener on a loopback port that takes the login's answer for one state."""

    def __init__(self) -> None:
        self.state = ""
        self.answer: dict[str, str] | None = None
        self._done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if urlsplit(self.path).path != "/callback" or q.get("state") != receiver.state:
                    self._reply(400, "This is not the login Shanzhi's command line is waiting for.")
                    return
                receiver.answer = q
                if "code" in q:
                    self._reply(200, "You are logged in to Shanzhi. You can close this window.")
                else:
                    self._reply(200, f"The login failed: {q.get('error', 'no reason given')}")
                receiver._done.set()

            def _reply(self, status: int, text: str) -> None:
                page = f"<!doctype html><meta charset='utf-8'><title>Shanzhi</title><p>{html.escape(text)}</p>"
                body = page.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sso-receiver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/callback"

    def wait(self, timeout: float) -> dict[str, str] | None:
        self._done.wait(timeout)
        return self.answer

    def __enter__(self) -> _Receiver:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()


def _graphical() -> bool:
    """Whether opening a browser can work here (not a text browser taking over the terminal)."""
    env = os.environ
    return bool(env.get("BROWSER") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")) or sys.platform in (
        "darwin",
        "win32",
    )


def login(c: Client, *, browser: bool, timeout: float) -> Any:
    """Log in through the server's OpenID Connect provider; the session token's description."""
    info = c.oidc_info()
    if not info.get("enabled"):
        raise LoginFailed(f"single sign-on is not configured on {c.url}; log in with 'shanzhi login --user NAME'")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    where = f"{info['name']} ({info['issuer']})"
    if not browser:
        start = c.oidc_start(challenge, None)
        err.print(f"Open this address in a browser and log in through {where}:\n  {start['authorization_url']}")
        code = str(typer.prompt("Code shown after logging in", err=True)).strip()
        return with_code(lambda otp: c.oidc_exchange(code, verifier, otp), None)
    with _Receiver() as rx:
        start = c.oidc_start(challenge, rx.url)
        rx.state = start["state"]
        url = start["authorization_url"]
        err.print(f"Logging in through {where}. If no browser opens, visit:\n  {url}", soft_wrap=True)
        if _graphical():
            webbrowser.open(url)
        else:
            err.print("(no graphical browser here: open the address on this machine, or use --no-browser)")
        answer = rx.wait(timeout)
    if answer is None:
        raise LoginFailed(f"no answer from the browser within {timeout:.0f} s; try again, or use --no-browser")
    if "code" not in answer:
        raise LoginFailed(answer.get("error", "the login failed"))
    return with_code(lambda otp: c.oidc_exchange(answer["code"], verifier, otp), None)
