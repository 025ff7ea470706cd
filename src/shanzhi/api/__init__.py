"""The REST API under /api/v1: FastAPI routes, schemas, token auth, audit, problem errors.

Routes own transactions (`with db.session() as s, s.begin()`); services below only flush.
"""

from shanzhi.api.app import create_app

__all__ = ["create_app"]
