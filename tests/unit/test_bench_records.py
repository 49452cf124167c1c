"""The studies that grow over several sittings keep their rows in bench/results/, and the docs say what those rows say.

Run folders (bench-runs/) are not committed. The recipe study, the small-data study and the model zoo rebuild their
docs sections from the run folders of this checkout *and* the committed rows of earlier sittings
(`bench/common.record_rows`), so a rebuild in a fresh checkout must neither drop a row nor change a published number.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import recipe  # noqa: E402
import small_data  # noqa: E402
import zoo  # noqa: E402


def _section(doc: Path, name: str) -> str:
    """The text between a docs file's `<!-- name:begin -->` and `<!-- name:end -->` markers."""
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", doc.read_text(), re.S)
    assert found, f"{doc} has no {name} section"
    return found.group(1)


def test_model_zoo_doc_is_what_the_recorded_rows_render():
    rows = json.loads((ROOT / "bench" / "results" / "zoo.json").read_text())
    measured = [rows[name] for name in zoo.ZOO if name in rows]
    assert {r["name"] for r in measured} == set(rows), "a recorded row has no config in bench/zoo.py"
    assert zoo.zoo_section(measured).rstrip() == _section(ROOT / "docs" / "model_zoo.md", "zoo")


@pytest.mark.parametrize(
    ("study", "module", "render"),
    [("recipe", recipe, recipe.recipe_section), ("small-data", small_data, small_data.small_data_section)],
)
def test_study_doc_is_what_the_recorded_rows_render(study, module, render):
    rows = json.loads((ROOT / "bench" / "results" / f"{study}.json").read_text())
    assert set(rows) <= set(module.VARIANTS)
    ordered = {name: rows[name] for name in module.VARIANTS if name in rows}
    assert render(ordered).rstrip() == _section(ROOT / "docs" / "benchmarks.md", study)


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_record_rows_keeps_earlier_rows_and_replaces_a_rerun(results):
    common.record_rows("study", {"a": {"acc": 0.5}, "b": {"acc": 0.6}})
    rows = common.record_rows("study", {"b": {"acc": 0.7}, "c": {"acc": 0.8}})
    assert rows == {"a": {"acc": 0.5}, "b": {"acc": 0.7}, "c": {"acc": 0.8}}
    assert json.loads((results / "study.json").read_text()) == rows
    assert common.recorded_rows("never-run") == {}


def test_a_stopped_recipe_run_is_resumed_with_its_epoch_time(tmp_path):
    """A run folder with a config but no finished fine-tune is continued, and its finished epochs' seconds count."""
    assert recipe.stopped_seconds(tmp_path / "absent") is None
    folder = tmp_path / "stopped"
    folder.mkdir()
    (folder / "config.yaml").write_text("run:\n  name: stopped\n")
    assert recipe.stopped_seconds(folder) == 0.0  # stopped before its first epoch ended
    (folder / "history.csv").write_text("epoch,loss,epoch_seconds\n0,1.5,64.5\n1,1.2,300.25\n")
    assert recipe.stopped_seconds(folder) == pytest.approx(364.75)
    (folder / "manifest.json").write_text(json.dumps({"stages": {"finetune": {"metrics": {}}}}))
    assert recipe.stopped_seconds(folder) is None  # finished: nothing to resume


def test_a_fitted_row_shows_the_input_size_and_macs_it_ships(tmp_path):
    """A `--fit` row ships the channel stage's model (here 96 px), not the 128-px fine-tune it started from."""
    from edgecls.run import RunDir

    stages = {"finetune": {"metrics": {"macs": 13_316_608}}, "channels": {"metrics": {"input_size": 96, "macs": 7_491_712}}}
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1, "stages": stages}))
    run = RunDir(tmp_path)
    assert zoo.shipped_shape(run, "cqat", 128, 13_316_608) == (96, 7_491_712)
    assert zoo.shipped_shape(run, "channels", 128, 13_316_608) == (96, 7_491_712)
    assert zoo.shipped_shape(run, "qat", 128, 13_316_608) == (128, 13_316_608)  # QAT of the fine-tune itself
