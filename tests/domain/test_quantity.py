import pytest
from hypothesis import given
from hypothesis import strategies as st

from shanzhi.domain.quantity import format_cpu, format_memory, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("text", "millis"), [("2", 2000), (0.1, 100), ("500m", 500), ("1.5", 1500), (3, 3000), ("0", 0)]
)
def test_parse_cpu(text: str | float, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("64Mi", 64 * 2**20), ("1Gi", 2**30), ("512M", 512 * 10**6), (1024, 1024), ("1.5Gi", 3 * 2**29), ("2k", 2000)],
)
def test_parse_memory(text: str | int, nbytes: int) -> None:
    assert parse_memory(text) == nbytes


@pytest.mark.parametrize("bad", ["lots", "-1", "1x", "", True, -2, float("inf")])
def test_bad_cpu_is_refused_with_the_value_named(bad: object) -> None:
    with pytest.raises(ValueError, match="cpu"):
        parse_cpu(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["64 apples", "Mi", "-5Mi", True])
def test_bad_memory_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**6))
def test_cpu_format_round_trips(millis: int) -> None:
    assert parse_cpu(format_cpu(millis)) == millis


@given(st.integers(min_value=0, max_value=2**50).map(lambda n: n * 1024))
def test_memory_format_is_exact_or_close(nbytes: int) -> None:
    shown = format_memory(nbytes)
    back = parse_memory(shown)
    assert abs(back - nbytes) <= max(1, nbytes) * 0.05
