"""docs/CONFIG.md is what `scripts/config_reference.py` generates from TrainConfig and configs/ today."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from conftest import invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import config_reference  # noqa: E402


def test_committed_reference_is_current():
    assert config_reference.DOC.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/CONFIG.md is stale: run `python scripts/config_reference.py` and commit the result.")


def test_every_key_and_preset_is_listed():
    from training.config import TrainConfig, list_presets
    text = config_reference.render()
    for f in dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in text
    for name in list_presets():
        assert f"| `{name}` |" in text


def test_comments_are_collected_with_their_continuation_lines():
    src = ("class TrainConfig:\n    # Data.\n    a: int = 1          # first part,\n"
           "                        # second part\n    b: str = 'x'\n    # Loss and optimisation.\n"
           "    c: float = 0.5      # alone | with a pipe\n    def __post_init__(self):\n        pass\n")
    assert config_reference.field_docs(src) == [("Data", [("a", "first part, second part"), ("b", "")]),
                                                ("Loss and optimisation", [("c", "alone | with a pipe")])]


def test_check_fails_on_a_stale_reference(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "CONFIG.md"
    monkeypatch.setattr(config_reference, "DOC", doc)
    doc.write_text(config_reference.render().replace("| `d_lr` |", "| `d_learning_rate` |"))
    code, _, err = invoke(config_reference.main, ["--check"], capsys)
    assert code == 1 and "stale" in err
    assert invoke(config_reference.main, [], capsys)[0] == 0
    assert invoke(config_reference.main, ["--check"], capsys)[0] == 0


@pytest.mark.parametrize("item, value", [("azim_range_deg=[-90,90]", [-90, 90])])
def test_documented_list_syntax_parses(item, value):
    from training.config import parse_set
    assert parse_set(item)[1] == value
