"""Flow records summed per hour, so traffic history outlives the records' retention (7 days by
default; the hourly sums are kept 90).

Each pass sums the complete hours not summed yet, oldest first and at most a day of them, from
the records that started in each (a connection still open then counts with its counters of that
moment). The hours already summed are never summed again: the newest summed hour is the mark.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from shanzhi.store.tables import Flow, FlowHour, utcnow

HOUR = timedelta(hours=1)
KEEP = timedelta(days=90)
MAX_HOURS = 24  # per pass


def _floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def roll_up_flows(s: Session, now: datetime | None = None) -> int:
    """Sum the complete hours not yet summed; returns how many hours were summed."""
    now = now or utcnow()
    last = s.scalar(select(func.max(FlowHour.hour)))
    if last is not None:
        start = last + HOUR
    else:
        first = s.scalar(select(func.min(Flow.started_at)))
        if first is None:
            return 0
        start = _floor(first)
    done = 0
    hour = start
    while hour + HOUR <= _floor(now) and done < MAX_HOURS:
        sums: dict[tuple[str, str, str, str, str, int, int], list[int]] = {}
        rows = s.execute(
            select(
                Flow.src_vdc,
                Flow.src_app,
                Flow.dst_vdc,
                Flow.dst_app,
                Flow.verdict,
                Flow.proto,
                Flow.dport,
                Flow.packets_out + Flow.packets_in,
                Flow.bytes_out + Flow.bytes_in,
            ).where(Flow.started_at >= hour, Flow.started_at < hour + HOUR)
        )
        for sv, sa, dv, da, verdict, proto, dport, packets, size in rows:
            key = (sv or "", sa or "", dv or "", da or "", str(verdict), int(proto), int(dport))
            acc = sums.setdefault(key, [0, 0, 0])
            acc[0] += 1
            acc[1] += int(packets or 0)
            acc[2] += int(size or 0)
        for (sv, sa, dv, da, verdict, proto, dport), (n, packets, size) in sums.items():
            s.add(
                FlowHour(
                    hour=hour,
                    src_vdc=sv,
                    src_app=sa,
                    dst_vdc=dv,
                    dst_app=da,
                    verdict=verdict,
                    proto=proto,
                    dport=dport,
                    flows=n,
                    packets=packets,
                    bytes=size,
                )
            )
        if not sums:  # an hour with nothing still marks its place
            s.add(FlowHour(hour=hour, verdict="", proto=0, dport=0))
        s.flush()
        hour += HOUR
        done += 1
    s.execute(delete(FlowHour).where(FlowHour.hour < now - KEEP))
    return done
