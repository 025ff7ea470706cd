"""Bearer-token authentication. Tokens are stored as SHA-256 hashes, never in clear."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from fastapi import Request
from sqlalchemy import select
from starlette.exceptions import HTTPException

from shanzhi.store import Database
from shanzhi.store.tables import Token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(db: Database, path: Path) -> str:
    """Make sure `path` holds a valid admin token (mode 0600); create one if needed."""
    if path.exists():
        token = path.read_text().strip()
        with db.session() as s, s.begin():
            if s.scalar(select(Token.id).where(Token.token_hash == token_hash(token))) is not None:
                os.chmod(path, 0o600)
                return token
    token = "szt_" + secrets.token_urlsafe(32)
    with db.session() as s, s.begin():
        s.add(Token(name=f"admin@{path.parent}", token_hash=token_hash(token), role="admin"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def require_token(request: Request) -> str:
    """FastAPI dependency: the caller's identity, or 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>' (see <data-dir>/admin.token)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    db: Database = request.app.state.db
    with db.reader.connect() as conn:  # a read: never queue behind writers
        name = conn.execute(select(Token.name).where(Token.token_hash == token_hash(token.strip()))).scalar()
    if name is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    request.state.actor = name
    return str(name)
