"""Durable state: SQLAlchemy 2 tables, Alembic migrations, engines for SQLite and PostgreSQL.

The API owns transactions; functions here and in the services only add and flush.
"""

from shanzhi.store.db import Database, open_database

__all__ = ["Database", "open_database"]
