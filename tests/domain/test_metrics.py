"""Turning readings into rates, averaging, bucketing."""

from datetime import UTC, datetime

import pytest

from shanzhi.domain.metrics import HOUR, MINUTE, Point, Usage, bucket, mean, rate


def test_rates_from_two_readings() -> None:
    before = Usage(cpu_seconds=10.0, memory=100, rx_bytes=1000, tx_bytes=None, read_bytes=0, write_bytes=50)
    after = Usage(cpu_seconds=13.0, memory=300, rx_bytes=5000, tx_bytes=None, read_bytes=4000, write_bytes=10)
    p = rate(before, after, 2.0)
    assert p.cpu == 1.5 and p.memory == 300.0
    assert p.rx == 2000.0 and p.tx is None and p.read == 2000.0
    assert p.write == 0.0  # a counter that went back (a restart) is no negative rate


def test_mean_over_the_points_that_have_a_series() -> None:
    m = mean([Point(1.0, 10.0, rx=None), Point(3.0, 30.0, rx=8.0)])
    assert (m.cpu, m.memory, m.rx, m.tx) == (2.0, 20.0, 8.0, None)
    with pytest.raises(ValueError):
        mean([])


def test_buckets_start_on_the_minute_and_the_hour() -> None:
    at = datetime(2026, 12, 5, 10, 41, 59, 999, tzinfo=UTC)
    assert bucket(at, MINUTE) == datetime(2026, 12, 5, 10, 41, tzinfo=UTC)
    assert bucket(at, HOUR) == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
