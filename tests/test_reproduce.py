"""scripts/reproduce.py and scripts/results.py: the zip splitter, the report builder on synthetic run directories,
and the smoke study end to end (real train.py / calc_metrics.py / generate.py subprocesses, stand-in detector)."""
from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import invoke

from dnnlib.util import UserError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import reproduce  # noqa: E402
import results  # noqa: E402


def _zip(path: Path, n: int, res: int = 8) -> list[str]:
    """A dataset zip of n random images with per-image 'labels'/'objects' lists in dataset.json."""
    rng = np.random.default_rng(0)
    names = [f"{i // 5:05d}/img{i:08d}.png" for i in range(n)]
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            buf = PIL.Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8))
            with z.open(name, "w") as f:
                buf.save(f, format="PNG")
        meta = {"labels": [[nm, [float(i)]] for i, nm in enumerate(names)],
                "objects": [[nm, i, "cars", -1] for i, nm in enumerate(names)], "camera": {"radius": 4.0}}
        z.writestr("dataset.json", json.dumps(meta))
    return names


# ---------------------------------------------------------------------------------------------------------------------
# Splitter.

def test_split_zip_gives_disjoint_halves_covering_the_set(tmp_path):
    names = _zip(tmp_path / "set.zip", 12)
    a, b = reproduce.split_zip(tmp_path / "set.zip", tmp_path / "a.zip", tmp_path / "b.zip", count_a=7, seed=3)
    assert len(a) == 7 and len(b) == 5 and not set(a) & set(b) and sorted(a + b) == names
    assert a != names[:7]  # a permutation, not the first images
    from training.dataset import ImageDataset
    for part, expect in (("a", a), ("b", b)):
        with zipfile.ZipFile(tmp_path / f"{part}.zip") as z:
            meta = json.loads(z.read("dataset.json"))
            assert sorted(n for n in z.namelist() if n.endswith(".png")) == expect
        assert [lab[0] for lab in meta["labels"]] == expect and [o[0] for o in meta["objects"]] == expect
        assert meta["camera"] == {"radius": 4.0} and meta["split"]["part"] == part
        assert len(ImageDataset(tmp_path / f"{part}.zip")) == len(expect)
    # Same seed, same split; another seed, another split; a B count leaves images out.
    a2, _ = reproduce.split_zip(tmp_path / "set.zip", tmp_path / "a.zip", tmp_path / "b.zip", 7, seed=3, force=True)
    a3, b3 = reproduce.split_zip(tmp_path / "set.zip", tmp_path / "c.zip", tmp_path / "d.zip", 4, 3, seed=4)
    assert a2 == a and a3 != a[:4] and len(b3) == 3 and not set(a3) & set(b3)


def test_split_zip_errors(tmp_path):
    _zip(tmp_path / "set.zip", 6)
    with pytest.raises(UserError, match="at most 6"):
        reproduce.split_zip(tmp_path / "set.zip", tmp_path / "a.zip", tmp_path / "b.zip", 4, 3)
    reproduce.split_zip(tmp_path / "set.zip", tmp_path / "a.zip", tmp_path / "b.zip", 3)
    with pytest.raises(UserError, match="--force"):
        reproduce.split_zip(tmp_path / "set.zip", tmp_path / "a.zip", tmp_path / "b.zip", 3)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(UserError, match="not a zip"):
        reproduce.split_zip(tmp_path / "x.zip", tmp_path / "e.zip", tmp_path / "f.zip", 3)


# ---------------------------------------------------------------------------------------------------------------------
# Report builder on synthetic run directories.

def _records(run_dir: Path, points: dict[float, tuple[float, float, float]]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "training_options.json").write_text(json.dumps({"config": {"batch": 4}}))
    (run_dir / "training-state-000000.pt").write_bytes(b"")
    for kimg, (fid, p, r) in points.items():
        snap = f"network-snapshot-{int(kimg):06d}.pkl"
        for name, res in (("fid1k_full", {"fid1k_full": fid}),
                          ("pr1k3_full", {"pr1k3_full_precision": p, "pr1k3_full_recall": r})):
            with open(run_dir / f"metric-{name}.jsonl", "a") as f:
                f.write(json.dumps({"metric": name, "results": res, "kimg": kimg, "snapshot_pkl": snap}) + "\n")


def _study(tmp_path: Path) -> Path:
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(dict(families=["cars"], ablations=["ns8", "noaug"], seeds=[0, 1])))
    base, abl = out / "runs" / "cars-baseline-s0", out / "runs" / "cars-ns8-s0"
    _records(base / "start" / "00000-a", {0.004: (200.0, 0.01, 0.02)})
    _records(base / "train" / "00000-a", {50.0: (120.0, 0.1, 0.1), 100.0: (90.0, 0.2, 0.1),
                                          150.0: (70.0, 0.3, 0.2), 200.0: (50.0, 0.4, 0.25)})
    (base / "train" / "00000-a" / "log.txt").write_text(
        "Training options:\n{}\ntick 1     kimg 50.000    time 100.0    sec/tick 1\n"
        "tick 2     kimg 100.000   time 210.5    sec/tick 1\nTraining options:\n"
        "tick 3     kimg 150.000   time 50.0     sec/tick 1\ntick 4     kimg 200.000   time 99.5     sec/tick 1\n")
    (base / "reproduce.json").write_text(json.dumps({"device": "Tesla T4", "sessions": []}))
    _records(abl / "start" / "00000-b", {0.004: (250.0, 0.0, 0.0)})
    _records(abl / "train" / "00000-b", {50.0: (150.0, 0.1, 0.1), 100.0: (80.0, 0.3, 0.1)})  # partial
    _records(abl / "train" / "00001-b", {200.0: (60.0, 0.35, 0.2)})  # the newest run dir with a state wins
    return out


def _row(md: str, first: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_tables_from_synthetic_runs(tmp_path):
    out = _study(tmp_path)
    (Path(out) / "DISCUSSION.md").write_text("Why cars diverged: see the table.\n")
    md_path = results.build_report(out, tmp_path / "docs" / "RESULTS.md")
    md = md_path.read_text()
    assert "## Discussion" in md and "Why cars diverged: see the table." in md
    row = _row(md, "cars-baseline-s0")  # run, presets, FID0, FID200, improvement, P, R, wall, GPU, dirs
    assert row[2:7] == ["200.00", "50.00", "75.0 %", "0.400", "0.250"]
    assert row[7] == "5 min" and row[8] == "Tesla T4"  # 210.5 + 99.5 s over two sessions
    assert _row(md, "cars-ns8-s0")[2:5] == ["250.00", "60.00", "76.0 %"]
    assert _row(md, "cars-noaug-s0")[2:4] == ["not run", "not run"]
    assert _row(md, "cars-baseline-s1")[2] == "not run"
    assert _row(md, "ns8")[2:7] == ["60.00", "+10.00", "+20.0", "0.350", "0.200"]  # ablation vs baseline
    assert _row(md, "100")[1:4] == ["90.00", "0.200", "0.100"]  # convergence table, kimg 100
    assert "Status: 2 of 4 runs done, 0 partial, 2 not run" in md
    assert "(needs every seed)" in md and "Study floors (10k sets): not run." in md
    with PIL.Image.open(md_path.parent / "results_fid.png") as im:
        assert im.size == (960, 560)
        colors = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert results.PALETTE[0] in colors and results.PALETTE[1] in colors  # one line per run


def test_summary_reproduces_the_report_without_run_directories(tmp_path, capsys):
    """`summarize` keeps every number the report reads: after deleting runs/, floors/ and commands.txt, the report
    built from summary.json alone has the same tables, floors and commands."""
    import shutil
    from metrics.detector import DETECTOR_SHA1
    out = _study(tmp_path)
    with open(out / "runs" / "cars-baseline-s0" / "train" / "00000-a" / "metric-fid1k_full.jsonl", "a") as f:
        f.write(json.dumps({"metric": "fid1k_full", "results": {"fid1k_full": 49.0}, "kimg": 200.0,
                            "detector_sha1": DETECTOR_SHA1}) + "\n")
    (out / "floors").mkdir()
    (out / "floors" / "cars-halves.json").write_text(json.dumps(
        {"label": "cars halves", "kind": "halves", "results": {"fid1k_full": 11.5}, "n_real": 5, "n_fake": 3}))
    (out / "commands.txt").write_text("python train.py --outdir x\n")
    (out / "figures").mkdir()
    PIL.Image.new("RGB", (4, 4)).save(out / "figures" / "cars_sheet.png")
    before = results.build_report(out, tmp_path / "a" / "RESULTS.md").read_text()
    assert invoke(reproduce.main, ["summarize", "--outdir", out], capsys)[0] == 0
    for name in ("runs", "floors"):
        shutil.rmtree(out / name)
    (out / "commands.txt").unlink()
    (out / "study.json").unlink()
    after = results.build_report(out, tmp_path / "a" / "RESULTS.md").read_text()
    assert after.split("## Commands")[0] == before.split("## Commands")[0]
    rerun = "python scripts/reproduce.py run --outdir runs/study --families cars --ablations 'ns8,noaug' --seeds 0,1"
    assert rerun in before and rerun in after
    assert "python train.py --outdir x" in before and "The 1 commands it ran" in after
    assert "cars halves | 11.50" in after and "49.00" in after
    assert f"every record names the official file (sha1 {DETECTOR_SHA1})" in after
    # A figure inside the report's directory is linked in place, not copied.
    inside = results.build_report(out, tmp_path / "R.md").read_text()
    assert "](study/figures/cars_sheet.png)" in inside and not (tmp_path / "results").exists()
    # Summarizing needs the run directories; a broken summary is a clear error.
    assert invoke(reproduce.main, ["summarize", "--outdir", out], capsys)[0] == 1
    (out / "summary.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        results.build_report(out, tmp_path / "a" / "RESULTS.md")


def test_report_marks_off_grid_snapshots_and_names_the_detector(tmp_path):
    from metrics.detector import DETECTOR_SHA1
    out = _study(tmp_path)
    run_dir = out / "runs" / "cars-baseline-s0" / "train" / "00000-a"
    with open(run_dir / "metric-fid1k_full.jsonl", "a") as f:   # a resumed run's snapshot between the grid points
        f.write(json.dumps({"metric": "fid1k_full", "results": {"fid1k_full": 65.0}, "kimg": 188.616,
                            "snapshot_pkl": "network-snapshot-000188.pkl", "detector_sha1": DETECTOR_SHA1}) + "\n")
    md = results.build_report(out, tmp_path / "R.md").read_text()
    assert _row(md, "188.616 *")[1] == "65.00" and "a snapshot off the kimg grid" in md
    assert _row(md, "200")[1] == "50.00"
    assert f"every record names the official file (sha1 {DETECTOR_SHA1})" in md
    with open(run_dir / "metric-fid1k_full.jsonl", "a") as f:
        f.write(json.dumps({"metric": "fid1k_full", "results": {"fid1k_full": 64.0}, "kimg": 190.0,
                            "snapshot_pkl": "x.pkl", "detector_sha1": "0" * 40}) + "\n")
    md = results.build_report(out, tmp_path / "R.md").read_text()
    assert "**not** the official file" in md and "0" * 40 in md


def test_report_full_plan_lists_the_runs_not_asked_for(tmp_path):
    out = _study(tmp_path)
    partial = results.build_report(out, tmp_path / "a" / "R.md").read_text()
    full = results.build_report(out, tmp_path / "b" / "R.md", full_plan=True).read_text()
    assert "carla-baseline-s0" not in partial
    assert _row(full, "carla-baseline-s0")[2:4] == ["not run", "not run"]
    assert _row(full, "cars-baseline-s0") == _row(partial, "cars-baseline-s0")


def test_report_without_runs_invents_nothing(tmp_path):
    md = results.build_report(tmp_path / "none", tmp_path / "R.md").read_text()
    assert "Status: 0 of 9 runs done" in md and not (tmp_path / "results_fid.png").exists()
    assert not re.search(r"\| \d+\.\d\d \|", md)  # no FID value anywhere
    assert "no plot yet" in md


def test_numbers_helpers():
    assert results.improvement_pct(200.0, 50.0) == pytest.approx(75.0)
    assert results.improvement_pct(50.0, 60.0) == pytest.approx(-20.0)
    assert results.improvement_pct(None, 5.0) is None
    assert results.log_wall_seconds("no status lines") is None
    assert results.nice_ticks(0, 200) == [0, 50, 100, 150, 200]
    assert results.nice_ticks(0, 437.2)[-1] >= 437.2
    assert results.checkpoints(dict(kimg=200.0, snap_kimg=50.0)) == [0, 50, 100, 150, 200]
    text = ("a.zip vs b.zip        fid1k_full  fid1k_full=12.5        2000  1000  3.0\n"
            "a.zip vs b.zip        pr1k3_full  pr1k3_full_precision=0.75, pr1k3_full_recall=0.5  2000  1000  0.1\n"
            "detector official (sha1 x), resize r, seed 0, device cpu\n")
    parsed = results.parse_compare_output(text)
    assert parsed["results"] == {"fid1k_full": 12.5, "pr1k3_full_precision": 0.75, "pr1k3_full_recall": 0.5}
    assert parsed["n_real"] == 2000 and parsed["n_fake"] == 1000 and parsed["detector"].startswith("detector off")
    with pytest.raises(UserError):
        results.parse_compare_output("Error: something")


def test_plan_runs():
    plan = results.plan_runs(["carla", "cars"], ["ns8"], [0, 1], smoke=True)
    assert [r.name for r in plan] == ["carla-baseline-s0", "cars-baseline-s0", "cars-ns8-s0", "cars-baseline-s1"]
    assert plan[2].cfg == "cars,t4,ns8,smoke" and plan[3].seed == 1
    # Ablations at more seeds, each with the ablation family's same-seed baseline (planned once, also for the first
    # seed when the ablation family is not among the families).
    names = [r.name for r in results.plan_runs(["carla"], ["ns8", "noaug"], [0, 1], ablation_seeds=[0, 1, 2])]
    assert names == ["carla-baseline-s0", "cars-ns8-s0", "cars-noaug-s0", "cars-baseline-s1", "cars-baseline-s0",
                     "cars-ns8-s1", "cars-noaug-s1", "cars-ns8-s2", "cars-noaug-s2", "cars-baseline-s2"]
    # Only seed-1 ablations (a study continued with --ablation-seeds 1): no seed-0 ablation runs.
    names = [r.name for r in results.plan_runs(["cars"], ["ns8"], [0], ablation_seeds=[1])]
    assert names == ["cars-baseline-s0", "cars-ns8-s1", "cars-baseline-s1"]


# ---------------------------------------------------------------------------------------------------------------------
# Commands of the study (fresh, resumed, skipped) without running them.

class _FakeRecorder:
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv, label, session_file=None, capture=False) -> str:
        self.calls.append(list(argv))
        return ""

    def note(self, text) -> None:
        self.calls.append(["skipped", text])


def test_train_commands_fresh_resume_and_skip(tmp_path):
    opts = dict(outdir=str(tmp_path), data={"cars": "d.zip"}, detector=None, kimg=200.0, snap_kimg=50.0)
    run = results.plan_runs(["cars"], [], [3])[0]
    rec = _FakeRecorder()
    reproduce.train_run(rec, opts, run)  # nothing exists: two fresh train.py runs
    start, train = (" ".join(c) for c in rec.calls)
    assert "--cfg cars,t4" in start and "--kimg 0.004" in start and "--seed 3" in start
    assert start.endswith(f"--outdir {tmp_path}/runs/cars-baseline-s3/start") and "--resume" not in start
    assert "--kimg 200 --metrics fid1k_full,pr1k3_full --snap 1 --set kimg_per_tick=50 --set image_snap=1" in train
    run_dir = tmp_path / "runs" / "cars-baseline-s3" / "train" / "00000-x"
    run_dir.mkdir(parents=True)
    (run_dir / "training-state-000100.pt").write_bytes(b"")
    (run_dir / "network-snapshot-000100.pkl").write_bytes(b"")
    (run_dir / "log.txt").write_text("tick 2 kimg 100.000 time 5.0\n")
    rec.calls.clear()
    opts["detector"] = "/d.pt"
    reproduce._train_stage(rec, opts, run, "train", 200.0, [])  # interrupted: resume in place, then metrics
    assert rec.calls[0][-4:] == ["--outdir", str(run_dir), "--resume", "auto"] and "none" in rec.calls[0]
    assert rec.calls[1][0].endswith("calc_metrics.py") and rec.calls[1][1:3] == ["--network", str(run_dir)]
    assert rec.calls[1][-2:] == ["--detector", "/d.pt"]
    (run_dir / "log.txt").write_text("Done: 200.000 kimg in 4 ticks. Run directory: x\n")
    for m in results.METRICS:
        (run_dir / f"metric-{m}.jsonl").write_text(json.dumps({"snapshot_pkl": "network-snapshot-000100.pkl"}))
    rec.calls.clear()
    reproduce._train_stage(rec, opts, run, "train", 200.0, [])  # finished and evaluated: nothing to do
    assert rec.calls == [["skipped", f"cars-baseline-s3 train: trained to 200 kimg in {run_dir}"]]


def test_failed_start_metrics_do_not_hold_the_training_back(tmp_path):
    class Rec(_FakeRecorder):
        def run(self, argv, label, session_file=None, capture=False) -> str:
            super().run(argv, label, session_file, capture)
            if argv[0].endswith("train.py"):   # leave a snapshot behind so that metrics are due
                out = Path(argv[argv.index("--outdir") + 1]) / "00000-x"
                out.mkdir(parents=True, exist_ok=True)
                (out / "network-snapshot-000000.pkl").write_bytes(b"")
                return ""
            if "start" in label:               # only the 0-kimg point's metrics fail
                raise reproduce.StepFailed(f"[{label}] failed with exit status 1: out of memory")
            return ""

    opts = dict(outdir=str(tmp_path), data={"cars": "d.zip"}, detector="/d.pt", kimg=200.0, snap_kimg=50.0)
    run = results.plan_runs(["cars"], [], [0])[0]
    rec = Rec()
    with pytest.raises(reproduce.MetricsFailed, match="start metrics"):
        reproduce.train_run(rec, opts, run)
    scripts = [(Path(c[0]).name, c[c.index("--kimg") + 1] if "--kimg" in c else "") for c in rec.calls]
    assert scripts == [("train.py", "0.004"), ("calc_metrics.py", ""), ("train.py", "200"), ("calc_metrics.py", "")]


def test_study_wide_overrides_reach_every_train_command_and_must_match(tmp_path, capsys):
    opts = dict(outdir=str(tmp_path), data={"cars": "d.zip"}, detector=None, kimg=200.0, snap_kimg=50.0,
                train_set=["r1_fp32=true"])
    rec = _FakeRecorder()
    reproduce.train_run(rec, opts, results.plan_runs(["cars"], [], [0])[0])
    assert all("--set r1_fp32=true" in " ".join(c) for c in rec.calls) and len(rec.calls) == 2
    base = dict(kimg=200.0, snap_kimg=50.0, count=8, resolution=16, smoke=False, detector=None,
                ablation_family="cars", spread_family="cars", families=["cars"], ablations=[], seeds=[0])
    reproduce._merge_study(tmp_path, base | {"train_set": ["r1_fp32=true"]})
    with pytest.raises(reproduce.UserError, match="train_set"):
        reproduce._merge_study(tmp_path, base | {"train_set": []})
    older = tmp_path / "older"                            # a study.json written before --set existed
    older.mkdir()
    (older / "study.json").write_text(json.dumps({k: v for k, v in base.items()}))
    with pytest.raises(reproduce.UserError, match=r"train_set=\[\]"):
        reproduce._merge_study(older, base | {"train_set": ["r1_fp32=true"]})
    md = results.build_report(tmp_path, tmp_path / "R.md").read_text()
    assert "with `--set r1_fp32=true`" in md
    code, out, err = invoke(reproduce.main, ["run", "--outdir", str(tmp_path / "x"), "--set", "bogus_key=1"], capsys)
    assert code == 1 and "bogus_key" in err and not (tmp_path / "x").exists()   # rejected before anything runs


def test_recorder_stop_passes_the_signal_on_and_starts_nothing_new(tmp_path):
    import signal
    import threading
    rec = reproduce.Recorder(tmp_path, "cpu")
    errors = []

    def long_step():
        try:
            rec.run(["-c", "import time; time.sleep(60)"], "sleeper")
        except reproduce.StepFailed as exc:
            errors.append(str(exc))
    worker = threading.Thread(target=long_step)
    worker.start()
    for _ in range(200):
        if rec.children:
            break
        threading.Event().wait(0.02)
    rec.stop(signal.SIGTERM)
    worker.join(timeout=30)
    assert not worker.is_alive() and errors and "[sleeper] failed" in errors[0]
    with pytest.raises(reproduce.StepFailed, match="interrupted"):
        rec.run(["-c", "print(1)"], "after")
    assert "failed with exit status" in (tmp_path / "commands.txt").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# The smoke study end to end.

def _main(args: list[str]) -> int:
    return invoke(reproduce.main, args)[0]


@pytest.mark.slow  # ~1 min on 2 idle cores: 9 subprocesses, two FID-1k evaluations (1,000 renders each)
def test_smoke_study_end_to_end(tmp_path, monkeypatch, standin_detector):
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    det, out = standin_detector, tmp_path / "study"
    args = ["run", "--outdir", out, "--smoke", "--families", "cars", "--ablations", "", "--seeds", "0",
            "--resolution", "16", "--detector", det, "--jobs", "2"]
    assert _main(args) == 0
    commands = (out / "commands.txt").read_text()
    assert commands.count("python train.py") == 2 and "--kimg 0.004" in commands and "--kimg 0.02" in commands
    assert "calc_metrics.py --data" in commands and "generate.py images" in commands
    md = (out / "RESULTS.md").read_text()
    fids = []
    for stage in ("start", "train"):
        run_dir = results.find_run_dir(out / "runs" / "cars-baseline-s0" / stage)
        recs = [json.loads(ln) for ln in (run_dir / "metric-fid1k_full.jsonl").read_text().splitlines()]
        assert (run_dir / "metric-pr1k3_full.jsonl").is_file()
        fids.append(recs[-1]["results"]["fid1k_full"])
    row = _row(md, "cars-baseline-s0")
    assert row[2:4] == [f"{fids[0]:.2f}", f"{fids[1]:.2f}"]
    assert row[4] == f"{(fids[0] - fids[1]) / fids[0] * 100:.1f} %"
    floor = json.loads((out / "floors" / "cars-halves.json").read_text())
    assert _row(md, "cars-halves")[1] == f"{floor['results']['fid1k_full']:.2f}" and floor["n_real"] == 32
    assert (out / "results_fid.png").is_file() and (out / "figures" / "cars_sheet.png").is_file()
    assert "](figures/cars_sheet.png)" in md and not (out / "results").exists()    # linked in place, not copied
    assert (out / "figures" / "cars_interp.png").is_file()
    # Idempotent: a second invocation runs nothing new and reports the same numbers.
    assert _main(args) == 0
    again = (out / "commands.txt").read_text()
    assert [ln for ln in again.splitlines() if ln.startswith("python")] == \
        [ln for ln in commands.splitlines() if ln.startswith("python")]
    assert "skipped" in again and _row((out / "RESULTS.md").read_text(), "cars-baseline-s0") == row


def test_metric_jobs_bound_the_metrics_steps_at_once():
    slot = reproduce._metrics_slot(dict(metric_jobs=2))
    assert reproduce._metrics_slot(dict(metric_jobs=2)) is slot             # shared by every run of the study
    assert slot.acquire(blocking=False) and slot.acquire(blocking=False)
    assert not slot.acquire(blocking=False)                                 # a third waits
    slot.release(), slot.release()
    one = reproduce._metrics_slot({})                                       # default: one at a time
    assert one.acquire(blocking=False) and not one.acquire(blocking=False)
    one.release()


def test_report_combines_studies_and_lists_nothing_twice(tmp_path):
    first = _study(tmp_path)                                      # cars baseline s0 done, ns8 done, noaug not run
    second = tmp_path / "second"
    (second / "figures").mkdir(parents=True)
    (second / "study.json").write_text(json.dumps(dict(families=["cars"], ablations=["noaug"], seeds=[0],
                                                       train_set=["d_lr=0.001"])))
    _records(second / "runs" / "cars-baseline-s0" / "start" / "00000-c", {0.004: (400.0, 0.0, 0.0)})
    _records(second / "runs" / "cars-baseline-s0" / "train" / "00000-c", {200.0: (40.0, 0.5, 0.3)})
    _records(second / "runs" / "cars-noaug-s0" / "train" / "00000-d", {200.0: (45.0, 0.5, 0.1)})
    PIL.Image.new("RGB", (8, 8)).save(second / "figures" / "cars_sheet.png")
    md = results.build_report(first, tmp_path / "docs" / "R.md", full_plan=True, also=[second]).read_text()
    assert "--outdir " + first.as_posix() + " --outdir " + second.as_posix() + " --full-plan" in md
    headline, rest = md.split("# Study 1: ")
    # Headline: cars' best baseline is study 2's (400 -> 40, 90 %) over study 1's (200 -> 50, 75 %); carla has none.
    assert _row(headline, "cars")[1:] == ["341.3 -> 136.2 (60.1 %)", f"Study 2 (`{second.as_posix()}`), "
                                          "cars-baseline-s0", "`--set d_lr=0.001`", "400.00 -> 40.00", "90.0 %", "2"]
    assert _row(headline, "carla")[2:] == ["not run", "-", "-", "-", "0"]
    study1, study2 = md.split("# Study 2: ")
    assert "# Study 1: " in study1 and "trained with `--set d_lr=0.001`" in study1
    assert "| noaug |" not in study1                              # measured by study 2: not 'not run' in study 1
    assert _row(study1, "carla-baseline-s0")[2] == "not run"      # measured nowhere: still listed
    assert _row(study1, "cars-baseline-s0")[3] == "50.00" and _row(study2, "cars-baseline-s0")[3] == "40.00"
    assert _row(study2, "noaug")[2:5] == ["45.00", "+5.00", "+12.5"]
    assert "with `--set d_lr=0.001`" in study2 and "in the plot of Study 1" in study2
    assert "![cars sheet](results-second/cars_sheet.png)" in study2
    assert "contact sheet: not run here (Study 2 has one)" in study1   # pointed to, not silently missing
    assert "interpolation: not run;" not in study1 and "interpolation: not run\n" in study1   # nowhere: plain
    assert (tmp_path / "docs" / "results-second" / "cars_sheet.png").is_file()
    assert results._series_label("cars-baseline-s0", {"train_set": ["d_lr=0.001"]}, True) == \
        "cars-baseline-s0 d_lr=0.001"
    with pytest.raises(UserError, match="twice"):
        results.build_report(first, tmp_path / "R2.md", also=[first])


def test_metrics_in_training_hands_the_detector_to_train_py(tmp_path, monkeypatch):
    """--metrics-in-training: train.py gets the metrics and the detector file; no calc_metrics step is needed."""
    calls = []

    class Rec:
        def run(self, argv, label, session=None):
            calls.append(argv)

        def note(self, text):
            pass
    run = results.plan_runs(["cars"], [], [0])[0]
    base = dict(outdir=str(tmp_path), data={"cars": "cars.zip"}, detector="/d/default_1.pt", train_set=["d_lr=0.001"])
    for flag, expect in ((False, "none"), (True, ",".join(results.METRICS))):
        calls.clear()
        reproduce._train_stage(Rec(), dict(base, metrics_in_training=flag), run, "train", 200.0, [])
        argv = calls[0]
        assert argv[argv.index("--metrics") + 1] == expect
        assert ("metrics_detector=/d/default_1.pt" in argv) is flag and "d_lr=0.001" in argv


def test_report_order_keeps_the_combined_report_whole(tmp_path):
    a, b = tmp_path / "study", tmp_path / "study-cars"
    assert reproduce.report_order(a, []) == [a]
    assert reproduce.report_order(b, [str(a)]) == [b, a]
    assert reproduce.report_order(b, [str(a), str(b)]) == [a, b]           # one of them: the order as given


def test_report_ablations_over_seeds_and_study_merge(tmp_path):
    """--ablation-seeds: one ablation table per seed against that seed's baseline, then the mean delta over seeds;
    study.json from before the option merges as 'ablations at the first seed'."""
    out = _study(tmp_path)                                         # baseline s0 50, ns8 s0 60, noaug s0 not run
    runs = out / "runs"
    _records(runs / "cars-baseline-s1" / "train" / "00000-e", {200.0: (80.0, 0.2, 0.1)})
    _records(runs / "cars-ns8-s1" / "train" / "00000-f", {200.0: (70.0, 0.2, 0.05)})
    _records(runs / "cars-noaug-s1" / "train" / "00000-g", {200.0: (95.0, 0.2, 0.01)})
    opts = dict(kimg=200.0, snap_kimg=50.0, count=10000, resolution=128, smoke=False, detector=None,
                ablation_family="cars", spread_family="cars", train_set=[], families=["cars"],
                ablations=["ns8", "noaug"], seeds=[0], ablation_seeds=[1])
    merged = reproduce._merge_study(out, opts)
    assert merged["ablation_seeds"] == [0, 1] and merged["seeds"] == [0, 1]
    md = results.build_report(out, tmp_path / "R.md").read_text()
    seed0, rest = md.split("## Ablations (cars, seed 1, 200 kimg)")
    seed1, over = rest.split("## Ablations over seeds 0, 1 (cars, 200 kimg)")
    assert "## Ablations (cars, seed 0, 200 kimg)" in seed0 and _row(seed0, "ns8")[3] == "+10.00"
    assert _row(seed1, "ns8")[2:5] == ["70.00", "-10.00", "-12.5"] and _row(seed1, "noaug")[3] == "+15.00"
    rows = [ln.split("|")[1].strip() for ln in seed1.splitlines() if ln.startswith("| ") and "`cars" in ln]
    assert rows[:3] == ["baseline", "ns8", "noaug"]                 # the baseline's row first
    assert _row(over, "ns8")[1:] == ["+10.00", "-10.00", "+0.00", "2", "1 of 2"]
    assert _row(over, "noaug")[1:] == ["-", "+15.00", "+15.00", "1", "1 of 1"]   # s0 not run: the mean of one
    assert "ablations ns8, noaug on cars at seeds 0, 1" in md


def test_side_by_side_runs_turn_the_kernels_off_unless_asked():
    env = {}
    assert reproduce.side_by_side_env(1, env) is None and env == {}
    note = reproduce.side_by_side_env(6, env)
    assert "HNG_KERNELS=0 for every step" in note and env == {"HNG_KERNELS": "0"}
    env = {"HNG_KERNELS": "1"}
    assert reproduce.side_by_side_env(6, env) is None and env == {"HNG_KERNELS": "1"}   # the caller's choice kept


def test_a_study_can_train_another_setting(tmp_path, capsys):
    """--setting puts a recipe (or standard) after the family preset in every run; another setting needs another
    --outdir; a family, an ablation or an unknown name is refused before anything runs."""
    plan = results.plan_runs(["cars", "chairs"], ["ns8"], [0, 1], setting="t4-whole")
    assert [r.cfg for r in plan] == ["cars,t4-whole", "chairs,t4-whole", "cars,t4-whole,ns8", "cars,t4-whole"]
    assert results.plan_runs(["cars"], [], [0])[0].cfg == "cars,t4"
    base = dict(kimg=200.0, snap_kimg=50.0, count=8, resolution=16, smoke=False, detector=None, train_set=[],
                ablation_family="cars", spread_family="cars", families=["cars"], ablations=[], seeds=[0])
    assert reproduce._merge_study(tmp_path, base | {"setting": "t4-whole"})["setting"] == "t4-whole"
    assert results.study_plan(results.load_study(tmp_path))[0].cfg == "cars,t4-whole"
    with pytest.raises(reproduce.UserError, match="setting"):
        reproduce._merge_study(tmp_path, base | {"setting": "t4"})
    for bad in ("cars", "ns8", "smoke", "nope"):
        code, _, err = invoke(reproduce.main, ["run", "--outdir", str(tmp_path / bad), "--setting", bad], capsys)
        assert code == 1 and "--setting" in err and not (tmp_path / bad).exists()
