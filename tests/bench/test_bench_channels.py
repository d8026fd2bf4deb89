"""``python -m condense.bench.channels``: the channel-count timing table and the multiple it suggests."""

from __future__ import annotations

import csv

import pytest

from condense.bench import channels
from condense.bench.channels import Timed, counts_for, parse_shapes, suggest_multiple


def _rows(times: dict[int, float], shape=(64, 8, 8), batch=32):
    full = max(times)
    return [Timed(shape, batch, c, full, t, t / times[full]) for c, t in times.items()]


def test_counts_cover_a_quarter_to_all_with_every_multiple_of_four():
    assert counts_for(64) == tuple(range(16, 65, 4))
    assert counts_for(16) == tuple(range(4, 17))
    assert counts_for(30)[0] == 7 and counts_for(30)[-1] == 30 and 8 in counts_for(30) and 28 in counts_for(30)


def test_a_step_function_of_the_count_suggests_its_step():
    # time of the next multiple of 16 up, as oneDNN's blocked convolutions at batch 32 on AVX-512
    steps = {c: float(-(-c // 16) * 16) for c in range(16, 65, 4)}
    assert suggest_multiple(_rows(steps)) == 16
    steps8 = {c: float(-(-c // 8) * 8) for c in range(16, 65, 4)}
    assert suggest_multiple(_rows(steps8)) == 8


def test_time_that_falls_with_the_count_or_hardly_at_all_needs_no_multiple():
    assert suggest_multiple(_rows({c: float(c * c) for c in range(16, 65, 4)})) == 1
    assert suggest_multiple(_rows({c: 1.0 + c / 1000 for c in range(16, 65, 4)})) == 1  # overhead only


def test_every_shape_must_show_the_steps():
    steps = _rows({c: float(-(-c // 16) * 16) for c in range(16, 65, 4)})
    smooth = _rows({c: float(c * c) for c in range(8, 33, 2)}, shape=(32, 16, 16))
    assert suggest_multiple(steps + smooth) == 1


def test_the_bench_prints_a_table_and_writes_its_csv(tmp_path, capsys):
    out = tmp_path / "channels.csv"
    assert channels.main(["--shapes", "8x4x4", "--batch-sizes", "1,2", "--repeats", "2", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8x4x4, batch 1" in printed and "8x4x4, batch 2" in printed and "--width-multiple" in printed
    rows = list(csv.DictReader(out.open()))
    assert [int(r["channels"]) for r in rows if r["batch"] == "1"] == list(range(2, 9))
    for r in rows:
        assert float(r["mac_ratio"]) == pytest.approx((int(r["channels"]) / 8) ** 2, abs=1e-4)
        assert float(r["median_ms"]) > 0 and float(r["time_ratio"]) > 0
    assert {float(r["time_ratio"]) for r in rows if r["channels"] == "8"} == {1.0}
    # its own CSV is replaced; any other file is not
    assert channels.main(["--shapes", "8x4x4", "--batch-sizes", "1", "--repeats", "1", "--csv", str(out)]) == 0
    other = tmp_path / "notes.csv"
    other.write_text("mine\n")
    assert channels.main(["--shapes", "8x4x4", "--repeats", "1", "--csv", str(other)]) == 1
    assert other.read_text() == "mine\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "8x4"], "is not CxHxW"),
        (["--shapes", "2x8x8"], "has 2 channels"),
        (["--shapes", ""], "no shape given"),
        (["--batch-sizes", "0"], "--batch-sizes '0' is not a list of integers >= 1"),
        (["--repeats", "0"], "--repeats 0 must be >= 1"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert channels.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_parse_shapes():
    assert parse_shapes("16x32x32, 64x8x8") == ((16, 32, 32), (64, 8, 8))
