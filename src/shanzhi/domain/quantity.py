"""Parsing and printing of resource quantities.

CPU is held as integer millicores, memory and storage as integer bytes, so sums are exact.
Accepted forms follow Kubernetes: cpu `2`, `0.5`, `500m`; memory `64Mi`, `1Gi`, `512M`, `1048576`.
"""

from __future__ import annotations

import math
import re

#: the largest quantities anything may ask for: a million cores, an exbibyte, a billion instances
MAX_CPU_MILLIS = 10**9
MAX_BYTES = 2**60
MAX_COUNT = 10**9
_BIN = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DEC = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]i|[kKMGTP])?[Bb]?\s*$")
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m)?\s*$")


def parse_cpu(value: str | int | float) -> int:
    """Return millicores for a cpu quantity; raise ValueError naming the bad value."""
    if isinstance(value, bool):
        raise ValueError(f"cpu must be a number like 0.5 or '500m', not {value!r}")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"cpu must be a non-negative number, not {value!r}")
        return _bounded("cpu", value * 1000, MAX_CPU_MILLIS, f"{MAX_CPU_MILLIS // 1000} cores")
    m = _CPU_RE.match(value)
    if not m:
        raise ValueError(f"cpu must be a number like 0.5 or '500m', not {_short(value)}")
    number = float(m.group(1))
    return _bounded("cpu", number if m.group(2) else number * 1000, MAX_CPU_MILLIS, f"{MAX_CPU_MILLIS // 1000} cores")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def _bounded(what: str, amount: float, most: int, most_text: str) -> int:
    if not math.isfinite(amount) or amount > most:
        raise ValueError(f"{what} is more than the most anything may ask for ({most_text})")
    return round(amount)


def parse_count(value: object, what: str = "instances") -> int:
    """A whole number of things (instances, replicas): an integer or its decimal digits, no
    fractions, no booleans, at most MAX_COUNT; raise ValueError naming the bad value."""
    n = value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        n = int(value.strip()) if len(value.strip()) <= 12 else MAX_COUNT + 1
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"{what} must be a whole number, not {_short(value)}")
    if not 0 <= n <= MAX_COUNT:
        raise ValueError(f"{what} must be between 0 and {MAX_COUNT}, not {_short(value)}")
    return n


def parse_memory(value: str | int | float) -> int:
    """Return bytes for a memory quantity; raise ValueError naming the bad value."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size like '64Mi' or '1Gi', not {value!r}")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"memory must be a non-negative size, not {value!r}")
        return _bounded("memory", value, MAX_BYTES, "1Ei")
    m = _MEM_RE.match(value)
    if not m:
        raise ValueError(f"memory must be a size like '64Mi' or '1Gi', not {_short(value)}")
    number = float(m.group(1))
    unit = m.group(2)
    factor = 1 if unit is None else _BIN.get(unit) or _DEC[unit]
    return _bounded("memory", number * factor, MAX_BYTES, "1Ei")


def format_cpu(millis: int) -> str:
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_memory(nbytes: int) -> str:
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _BIN[unit]
        if nbytes >= factor:
            if nbytes % factor == 0:
                return f"{nbytes // factor}{unit}"
            return f"{nbytes / factor:.1f}{unit}"
    return str(nbytes)
