import dataclasses

import pytest

from condense._budget import Budget, format_count, parse_budget, parse_input_size
from condense._errors import BudgetError, CondenseError


@pytest.mark.parametrize(
    "text, value, relative",
    [
        ("250M", 250e6, False),
        ("250m", 250e6, False),
        ("1.2G", 1.2e9, False),
        ("1.2g", 1.2e9, False),
        ("1B", 1e9, False),
        ("1b", 1e9, False),
        ("800K", 800e3, False),
        ("800k", 800e3, False),
        ("2.5e8", 2.5e8, False),
        ("2.5E8", 2.5e8, False),
        ("250000000", 250e6, False),
        (".5G", 0.5e9, False),
        ("  60%  ", 60.0, True),
        ("60%", 60.0, True),
        ("100%", 100.0, True),
        ("0.5%", 0.5, True),
        ("\t3.5M\n", 3.5e6, False),
        ("12 M", 12e6, False),
    ],
)
def test_accepted_budgets(text, value, relative):
    budget = parse_budget(text)
    assert budget == Budget(pytest.approx(value), relative)
    assert budget.relative is relative


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "-5M",
        "-60%",
        "0",
        "0M",
        "0%",
        "abc",
        "12Q",
        "%",
        "M",
        "1.2.3M",
        "inf",
        "nan",
        "infM",
        "101%",
        "150%",
        "1,000",
        "1_000",
        "2e8M",
        "0.5",
        "5MM",
        "M5",
        "+-1",
        "1 2M",
        "60 %%",
        "1e400",
    ],
)
def test_rejected_budgets(text):
    with pytest.raises(BudgetError) as info:
        parse_budget(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    assert "250M" in message and "60%" in message  # lists the accepted forms


def test_budget_errors_are_condense_errors():
    with pytest.raises(CondenseError):
        parse_budget("nope")
    with pytest.raises(ValueError):
        parse_budget("nope")


def test_resolve():
    assert parse_budget("60%").resolve(1000.0) == pytest.approx(600.0)
    assert parse_budget("100%").resolve(1234.0) == pytest.approx(1234.0)
    assert parse_budget("250M").resolve(1e9) == 250e6  # absolute: the original does not matter


def test_budget_is_frozen_and_passthrough():
    budget = parse_budget("1G")
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.value = 2.0
    assert parse_budget(budget) is budget
    assert parse_budget(250_000_000) == Budget(250e6, False)
    for bad in (0, -1, 0.5, float("inf"), float("nan"), True, None):
        with pytest.raises(BudgetError):
            parse_budget(bad)


def test_budget_str_round_trips():
    for text in ("250M", "1.2G", "800K", "60%", "12.5%"):
        budget = parse_budget(text)
        assert parse_budget(str(budget)) == budget


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0"),
        (96, "96"),
        (999, "999"),
        (1000, "1.00K"),
        (1234, "1.23K"),
        (12_345, "12.3K"),
        (812_000, "812K"),
        (999_400, "999K"),
        (999_600, "1.00M"),
        (5_288_548, "5.29M"),
        (11_689_512, "11.69M"),
        (385_900_000, "385.9M"),
        (999_960_000, "1.00G"),
        (1_230_000_000, "1.23G"),
        (1_814_078_976, "1.81G"),
        (2e12, "2.00T"),
        (-5_290_000, "-5.29M"),
        (250e6, "250.0M"),
    ],
)
def test_format_count(n, text):
    assert format_count(n) == text


@pytest.mark.parametrize(
    "text, size",
    [
        ("3x224x224", (3, 224, 224)),
        ("3X32X32", (3, 32, 32)),
        (" 1 x 28 x 28 ", (1, 28, 28)),
        ("224x224", (3, 224, 224)),
        ("160x128", (3, 160, 128)),
        ((3, 64, 64), (3, 64, 64)),
        ([64, 64], (3, 64, 64)),
    ],
)
def test_parse_input_size(text, size):
    assert parse_input_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "224",
        "",
        "x",
        "3x224x",
        "0x224x224",
        "3x-2x4",
        "3x224x224x2",
        "ax3x3",
        "3.5x224x224",
        "3*224*224",
        (3,),
        (3, 1.5, 2),
        None,
    ],
)
def test_parse_input_size_rejects(text):
    with pytest.raises(CondenseError) as info:
        parse_input_size(text)
    assert "\n" not in str(info.value)
    assert "3x224x224" in str(info.value)
