"""The one resolver for comma-separated integer lists (seeds, batch sizes, epochs, K values)."""

import argparse

import pytest

from condense._errors import ConfigError
from condense._intlist import int_list_type, parse_int_list


def test_parses_and_ignores_spaces_and_empty_parts():
    assert parse_int_list("0,1,2", "--seeds") == (0, 1, 2)
    assert parse_int_list(" 1, 32 ,", "--batch-sizes", low=1) == (1, 32)
    assert parse_int_list("3,3", "--milestones") == (3, 3)  # repeats allowed unless asked
    assert parse_int_list("", "--milestones", empty_ok=True) == ()


@pytest.mark.parametrize(
    "text,kwargs,needle",
    [
        ("", {}, "--x '' is not a list of integers >= 0"),
        ("0,x", {}, "--x '0,x' is not a list of integers >= 0"),
        ("1.5", {}, "is not a list of integers"),
        ("0,32", {"low": 1}, "--x '0,32' is not a list of integers >= 1"),
        ("-1", {}, "is not a list of integers >= 0"),
        ("1,1", {"distinct": True}, "--x '1,1' is not a list of distinct integers >= 0"),
    ],
)
def test_bad_lists_are_one_line_errors_that_name_the_flag(text, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        parse_int_list(text, "--x", example="1,32", **kwargs)
    assert needle in err.value.message and err.value.hint == "write e.g. --x 1,32"
    assert "\n" not in str(err.value)


def test_argparse_type_reports_a_usage_error():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int_list_type("--batches", low=1, example="1,32"), default=(1, 32))
    assert p.parse_args([]).batches == (1, 32)
    assert p.parse_args(["--batches", "1,8"]).batches == (1, 8)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--batches", "0"])
    assert exc.value.code == 2
