"""Folders written before the data, search and supernet modules were split still load and compute what they
computed then (tests/fixtures/pre-split: written by that code, with its outputs on a fixed input)."""

import shutil
from pathlib import Path

import torch

import condense
from search import compare_studies, export_main, latency_fronts, study_from_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre-split"


def _probe():
    return torch.load(FIXTURES / "probe.pt", weights_only=True)


def test_an_old_condensed_directory_loads_with_its_outputs():
    probe = _probe()
    model = condense.load(FIXTURES / "model-dir").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(probe["x"]), probe["condensed"])
    resolved = condense.resolve_model(FIXTURES / "model-dir")
    assert resolved.is_directory and resolved.input_size == (1, 28, 28)


def test_an_old_search_folder_opens_compares_and_exports(tmp_path):
    probe = _probe()
    study_dir = tmp_path / "search"
    shutil.copytree(FIXTURES / "search", study_dir)  # the fixture is never written to
    study, meta = study_from_dir(study_dir)
    assert meta["format"] == "condense-search/1"
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert sorted(t.number for t in trained) == [0, 2]
    row = compare_studies([study_dir]).iloc[0]
    assert row["trials"] == 2 and row["hypervolume"] > 0
    for t in (0, 2):
        with torch.no_grad():
            out = condense.load(study_dir / "trials" / str(t)).eval()(probe["x"])
        torch.testing.assert_close(out, probe[f"trial{t}"])
    assert export_main([str(study_dir), "--trial", "2", "-o", str(tmp_path / "t2")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(condense.load(tmp_path / "t2").eval()(probe["x"]), probe["trial2"])
    members, summary = latency_fronts([study_dir], batches=(1,), repeats=1, warmup=0)
    assert set(members["study"]) == {"search", "original"} and len(summary) == 1
