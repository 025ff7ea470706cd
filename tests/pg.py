"""Throwaway PostgreSQL databases for tests (created per use, dropped after)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import make_url

BASE_URL = os.environ.get("SHANZHI_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pg_available() -> tuple[bool, str]:
    try:
        with psycopg.connect(_dsn(BASE_URL), connect_timeout=3):
            return True, ""
    except Exception as err:  # any failure means "not available"
        return False, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"shanzhi_test_{secrets.token_hex(6)}"
    with psycopg.connect(_dsn(BASE_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(BASE_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_dsn(BASE_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
