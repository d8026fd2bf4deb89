"""Latency budgets: the measurement, the fit that meets one with a few measured candidates, the CLI."""

import json

import pytest
import torch
from torch import nn

from conftest import ConvStage

import condense
import condense._fit as fit_module
from condense import BudgetError, ConfigError, LatencySetting, measure_latency, parse_latency
from condense.cli import main


Stage = ConvStage


class Net(nn.Module):
    """Two stages of 6 conv blocks: the smallest plan (one block + a Global layer each) is far cheaper."""

    def __init__(self, c=64):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.s1 = Stage(c, 6)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.s2 = Stage(2 * c, 6)
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):
        return self.head(self.s2(self.down(self.s1(self.stem(x)))).mean((2, 3)))


SIZE = (3, 32, 32)


def test_parse_latency():
    assert parse_latency("12ms").value == 12 and parse_latency("0.5s").value == 500
    assert parse_latency("800us").value == pytest.approx(0.8) and parse_latency(7).value == 7
    assert parse_latency("60%").relative and parse_latency("60%").resolve(20.0) == 12.0
    for bad in ("-1ms", "0", "fast", "120%", "12min"):
        with pytest.raises(BudgetError, match="latency"):
            parse_latency(bad)


def test_measure_latency_is_positive_and_leaves_the_model_alone():
    net = Net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ms = measure_latency(net, SIZE, LatencySetting(batch=2, repeats=3, min_time=0.0, threads=1))
    assert ms > 0 and net.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # BN stats untouched (eval)
    with pytest.raises(ConfigError):
        LatencySetting(mode="turbo")
    with pytest.raises(ConfigError):
        LatencySetting(batch=0)


def _fake_clock(monkeypatch, curve=lambda macs: macs / 1e6):
    """Latency as a known function of the measured MACs (the real clock is too noisy for exact checks)."""
    calls = []

    def fake(model, size, setting=None):
        macs, _ = condense.macs_and_params(model, size)
        calls.append(macs)
        return float(curve(macs))

    monkeypatch.setattr(fit_module, "measure_latency", fake)
    return calls


@pytest.mark.parametrize("curve", [lambda m: m / 1e6, lambda m: 0.3 + (m / 1e6) ** 1.5 / 40])
def test_latency_budget_is_met_in_a_few_measured_candidates(monkeypatch, curve):
    calls = _fake_clock(monkeypatch, curve)
    net = Net()
    res = condense.fit(net, latency="55%", input_size=SIZE)
    lat = res.latency
    assert lat.before_ms == pytest.approx(curve(res.macs_before))
    assert lat.budget_ms == pytest.approx(0.55 * lat.before_ms)
    assert lat.after_ms <= lat.budget_ms and lat.after_ms == pytest.approx(curve(res.macs_after))
    # the original, the candidates, and the same search with layer "drop" when none landed within 7% under
    assert 1 <= len(lat.candidates) <= 6 and len(calls) == 1 + len(lat.candidates) + len(lat.drop_candidates)
    assert lat.layer in (None, "global")  # here a layer's time is its MACs': never worth less than a block
    # the budget is used: the chosen plan is the slowest measured one within it, and not far under it
    within = [t for _, t in lat.candidates if t <= lat.budget_ms]
    assert lat.after_ms == max(within) and lat.after_ms >= 0.8 * lat.budget_ms
    assert all(c.options["K"] == 5 for c in res.plan.choices.values())  # K stays fixed for latency
    assert "latency" in res.message


def test_layers_slower_than_the_budget_allows_give_way_to_block_dropping(monkeypatch):
    """A Global layer that costs more time than the budget leaves (here each one a third of the original's
    time): no plan with layers fits, so the same search with layer "drop" runs and its plan is chosen."""
    from condense.pde import GlobalLayer

    original = condense.macs_and_params(Net(), SIZE)[0] / 1e6

    def curve_of(model):
        layers = sum(isinstance(m, GlobalLayer) for m in model.modules())
        return condense.macs_and_params(model, SIZE)[0] / 1e6 + layers * original / 3

    calls = []

    def fake(model, size, setting=None):
        calls.append(curve_of(model))
        return calls[-1]

    monkeypatch.setattr(fit_module, "measure_latency", fake)
    res = condense.fit(Net(), latency="70%", input_size=SIZE)
    lat = res.latency
    assert lat.layer == "drop" and lat.drop_candidates and lat.after_ms <= lat.budget_ms
    assert all(t > lat.budget_ms for _, t in lat.candidates)  # every plan with layers was too slow
    assert res.plan.choices and all(c.layer == "drop" for c in res.plan.choices.values())
    assert not any(isinstance(m, GlobalLayer) for m in res.model.modules())
    assert lat.after_ms == pytest.approx(curve_of(res.model))
    assert len(calls) == 1 + len(lat.candidates) + len(lat.drop_candidates)
    assert "layer 'drop' keeps" in res.message
    # without the fallback (the layers cheap, as their MACs say) the same budget keeps the Global layers
    monkeypatch.setattr(fit_module, "measure_latency", lambda m, s, st=None: condense.macs_and_params(m, SIZE)[0] / 1e6)
    assert all(c.layer == "global" for c in condense.fit(Net(), latency="70%", input_size=SIZE).plan.choices.values())


def test_latency_budget_with_a_mac_budget_meets_both(monkeypatch):
    _fake_clock(monkeypatch)
    res = condense.fit(Net(), latency="90%", macs="50%", input_size=SIZE)
    assert res.macs_after <= 0.5 * res.macs_before and res.latency.after_ms <= res.latency.budget_ms
    assert res.macs_budget == pytest.approx(0.5 * res.macs_before)  # the user's budget, not a search target


def test_latency_budget_below_the_fastest_plan_is_an_error(monkeypatch):
    _fake_clock(monkeypatch)
    with pytest.raises(BudgetError, match="below the fastest plan measured"):
        condense.fit(Net(), latency="1%", input_size=SIZE)


def test_already_within_latency_budget(monkeypatch):
    _fake_clock(monkeypatch)
    res = condense.fit(Net(), latency="100%", input_size=SIZE)
    assert "already within budget" in res.message and not res.plan.choices
    assert res.latency.after_ms == res.latency.before_ms


def test_bad_latency_fails_before_any_work(monkeypatch):
    calls = _fake_clock(monkeypatch)
    with pytest.raises(BudgetError):
        condense.fit(Net(), latency="soon", input_size=SIZE)
    assert calls == []


def test_cli_latency_budget_real_clock(tmp_path, capsys):
    """End to end with the real clock: a loose budget (70% of the original) that the smallest plan of this
    net (about a third of its MACs) meets with room to spare, so noise cannot flip the outcome."""
    src = tmp_path / "nets.py"
    src.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom test_latency import Net\n"
        "def net():\n    return Net()\n" % str(__import__("pathlib").Path(__file__).parent)
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                f"{src}:net",
                "--input-size",
                "3x32x32",
                "--latency",
                "70%",
                "--threads",
                "1",
                "--device",
                "cpu",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    lat = data["latency"]
    assert lat["after_ms"] <= lat["budget_ms"] == pytest.approx(0.7 * lat["before_ms"])
    assert lat["setting"] == {
        "batch": 1,
        "mode": "eager",
        "threads": 1,
        "device": "cpu",
        "device_name": "cpu (1 threads)",
    }
    saved = json.loads((out / "condensed.json").read_text())
    assert saved["latency"]["after_ms"] == lat["after_ms"]
    assert main([f"{src}:net", "--input-size", "3x32x32", "--latency", "later"]) == 1
    assert "bad latency budget" in capsys.readouterr().err
