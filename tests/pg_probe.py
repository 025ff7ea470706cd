"""Say up front whether the PostgreSQL variants of the suite will run (used by `make test`)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from pg import BASE_URL, pg_available

ok, why = pg_available()
if ok:
    print(f"PostgreSQL reachable at {BASE_URL}: store, API and controller tests run on SQLite and PostgreSQL.")
elif os.environ.get("SHANZHI_REQUIRE_POSTGRES"):
    print(f"PostgreSQL required but NOT reachable at {BASE_URL}: {why}", file=sys.stderr)
    sys.exit(1)
else:
    print(f"NOTE: PostgreSQL not reachable at {BASE_URL} ({why}): SKIPPING the PostgreSQL variants.")
