"""scripts/whole_objects_study.py's report: runs trained in another outdir are merged into summary.json (rows kept,
same names replaced, plan order), their sheet rows taken from the sheet already written."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import whole_objects_study as study  # noqa: E402


def _run_dir(outdir: Path, name: str, res: int, shade: int) -> None:
    rd = outdir / name / "00000-cars"
    rd.mkdir(parents=True)
    grid = np.full((2 * res, 4 * res, 3), shade, dtype=np.uint8)
    PIL.Image.fromarray(grid).save(rd / f"fakes{study.KIMG:06d}.png")
    PIL.Image.fromarray(np.zeros_like(grid)).save(rd / "reals.png")


def test_merge_keeps_recorded_rows_in_plan_order():
    recorded = [dict(name="r64-ref-s0", fid1k=1.0), dict(name="r32-ref-s0", fid1k=2.0)]
    rows = [dict(name="r64-ref-s1", fid1k=3.0), dict(name="r32-ref-s0", fid1k=4.0)]
    merged = study.merge(recorded, rows)
    assert [r["name"] for r in merged] == ["r64-ref-s0", "r32-ref-s0", "r64-ref-s1"]
    assert merged[1]["fid1k"] == 4.0                                      # the new run replaces the recorded row


def test_sheets_append_to_a_sheet_of_runs_trained_elsewhere(tmp_path):
    res, docs = 8, tmp_path / "docs"
    docs.mkdir()
    old = PIL.Image.new("RGB", (150 + 4 * res, 2 * res), (10, 20, 30))   # reals + one run, trained elsewhere
    old.save(study.sheet_path(docs, res, 0))
    for name, shade in (("r8-unif-cond-s0", 200), ("r8-ref-s1", 100)):
        _run_dir(tmp_path / "runs", name, res, shade)
    recorded = [dict(name="r8-ref-s0", res=res, seed=0)]
    rows = [dict(name="r8-unif-cond-s0", res=res, seed=0, kimg=study.KIMG),
            dict(name="r8-ref-s1", res=res, seed=1, kimg=study.KIMG)]
    written = study.contact_sheets(tmp_path / "runs", rows, docs, recorded)
    assert written == [study.sheet_path(docs, res, 0), study.sheet_path(docs, res, 1)]
    s0 = np.asarray(PIL.Image.open(written[0]))
    assert s0.shape[0] == 3 * res and (s0[:res, 150:] == 0).all()          # reals, the recorded run's row kept,
    assert (s0[res:2 * res] == (10, 20, 30)).all() and (s0[2 * res:, 150:] == 200).all()   # then the new run
    study.contact_sheets(tmp_path / "runs", rows, docs, study.merge(recorded, rows))     # reported again:
    assert (np.asarray(PIL.Image.open(written[0])) == s0).all()                           # the same sheet
    s1 = np.asarray(PIL.Image.open(written[1]))
    assert s1.shape[0] == 2 * res and (s1[:res, 150:] == 0).all() and (s1[res:, 150:] == 100).all()  # reals, run


def test_longer_runs_anneal_over_their_own_length(tmp_path):
    runs = {r["name"]: r for r in study.plan()}
    long = runs["r64-beta-cond-s0-k20"]
    args = study.train_args(long, tmp_path)
    assert args[args.index("--kimg") + 1] == "20" and "patch_scale=beta:0.001:0.8:20" in args
    short = study.train_args(runs["r64-unif-cond-s1"], tmp_path)
    assert short[short.index("--kimg") + 1] == "10" and "patch_scale=uniform:1:0:10" in short
    assert study.sheet_path(tmp_path, 64, 0, 20).name == "contact-64px-k20.png"
    assert study.sheet_path(tmp_path, 32, 1).name == "contact-32px-s1.png"
