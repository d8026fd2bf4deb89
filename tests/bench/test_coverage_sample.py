"""A fast sample of the timm coverage survey: a few models per major family, default condense, small input.

The full survey (every timm model up to 120M parameters) is ``python -m condense.bench.coverage``.
"""

import pytest

from condense.bench.coverage import check_model, family, summarize

FAMILIES = {
    "resnet": ["resnet18", "resnet26"],
    "efficientnet": ["efficientnet_b0"],
    "mobilenet": ["mobilenetv2_100", "mobilenetv3_small_100"],
    "convnext": ["convnext_atto"],
    "regnet": ["regnetx_002"],
    "cspnet": ["cs3darknet_s"],
    "ghostnet": ["ghostnet_100"],
    "mixnet": ["mixnet_s"],
    "dla": ["dla34"],
    "hrnet": ["hrnet_w18_small"],
    "growing channels": ["densenet121", "rexnet_100", "dpn68"],
}


@pytest.mark.parametrize("name", [n for names in FAMILIES.values() for n in names])
def test_default_condense_succeeds(name):
    row = check_model(name, small=64)
    assert row["status"] == "ok", row
    assert row["macs_after"] < row["macs_before"] and row["params_after"] < row["params_before"]


def test_a_model_without_repeats_is_reported_cleanly():
    row = check_model("resnet10t", small=64)  # one block per stage
    assert row["status"] == "no repeats" and row["error"] == ""


def test_summary_counts_only_models_with_repeats():
    rows = [dict(family="a", status="ok"), dict(family="a", status="no repeats"), dict(family="b", status="crash")]
    fam, ok, total = summarize(rows)
    assert (ok, total) == (1, 2) and fam["a"]["models"] == 2


def test_family_names():
    assert [family(n) for n in ("resnet50d", "mobilenetv2_100", "efficientnet_b0", "dla34")] == [
        "resnet",
        "mobilenetv2",
        "efficientnet",
        "dla",
    ]
