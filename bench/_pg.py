"""A throwaway PostgreSQL database for one benchmark run (None when none answers)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    base = make_url(PG).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"shanzhi_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=3) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as err:
        print(f"PostgreSQL not reachable, skipping it: {err}", file=sys.stderr)
        yield None
        return
    try:
        yield make_url(PG).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
