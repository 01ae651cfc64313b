"""The reproduction study (docs/RESULTS.md) as one command, plus the zip splitter behind its noise floors.

  python scripts/reproduce.py run --outdir runs/study            # the whole study (GPU; idempotent, resumable)
  python scripts/reproduce.py run --outdir runs/smoke --smoke --families cars --ablations ns8 --detector D.pt
  python scripts/reproduce.py report --outdir runs/study         # docs/studies/REPORT.md + results_fid.png
  python scripts/reproduce.py report --outdir docs/studies/baselines --outdir docs/studies/cars-ablations  # several
  python scripts/reproduce.py split --source set.zip --dest-a a.zip --dest-b b.zip --count-a 2000
  python scripts/reproduce.py summarize --outdir runs/study      # compact form: <outdir>/summary.json

What `run` does, each step printed and appended to `<outdir>/commands.txt` before it runs (as a subprocess of this
Python interpreter, from the repository root):
1. per family, `dataset_tool.py synth` renders the training set to `<outdir>/data/<family>-<res>-<count>.zip`;
2. per study run (family baseline, cars ablations, extra seeds of the spread family) two `train.py` runs:
   `runs/<name>/start` trains ONE minibatch (the "0 kimg" point: train.py snapshots only at tick ends, and the
   reference's tick-0 snapshot is likewise taken after its first minibatch) and `runs/<name>/train` trains the full
   length with one tick = --snap-kimg, a snapshot + metrics every tick (50, 100, 150, 200 kimg);
   metrics are fid1k_full and pr1k3_full against every real image, no x-flips (train.py's own protocol).
   With --detector, it trains with `--metrics none` and `calc_metrics.py --network RUN_DIR --detector ...`
   evaluates every snapshot afterwards (--metric-jobs of them at once), or, with --metrics-in-training, train.py
   evaluates each snapshot as it is written (`--set metrics_detector=...`);
3. noise floors: `split` cuts each training set into two disjoint halves (seeded permutation of its images) and
   `calc_metrics.py --data HALF_A --compare HALF_B` measures FID-1k/PR between them (all of A vs 1k images of B);
4. per family, `generate.py images --pose 30,30 --sheet` (contact sheet) and `generate.py interp` (strip + video)
   from the baseline's last snapshot;
5. the report (scripts/results.py).
A run whose last metric record reaches the full length is skipped; one with a training state is continued with
`--resume auto`; finished data sets, halves, floors and figures are reused. `runs/<name>/reproduce.json` records the
device and the wall time of every session of that run.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from dnnlib import util
from dnnlib.util import UserError

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
import results  # noqa: E402  (scripts/results.py: the study plan and the report)


# ---------------------------------------------------------------------------------------------------------------------
# Zip splitting (noise floors: two disjoint parts of the SAME image set).

def _split_meta(meta: dict | None, names: list[str], part: str, source: str, seed: int) -> dict:
    """dataset.json of one part: per-image lists ('labels', 'objects') filtered to `names`, the rest kept."""
    keep = set(names)
    out: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        per_image = isinstance(value, list) and all(isinstance(v, list) and v and isinstance(v[0], str) for v in value)
        out[key] = [v for v in value if v[0] in keep] if per_image and value else value
    out["split"] = {"source": os.path.basename(source), "part": part, "seed": int(seed), "count": len(names)}
    return out


def split_zip(source: str | os.PathLike, dest_a: str | os.PathLike, dest_b: str | os.PathLike, count_a: int,
              count_b: int | None = None, seed: int = 0, force: bool = False) -> tuple[list[str], list[str]]:
    """Split the images of a dataset zip into two disjoint zips (a seeded permutation; each part in name order).

    Part A gets `count_a` images, part B the next `count_b` (default: all the rest). Image bytes are copied unchanged;
    dataset.json keeps its keys with per-image lists filtered and a 'split' record added. Returns (names A, names B).
    """
    source = Path(source)
    if not zipfile.is_zipfile(source):
        raise UserError(f"'{source}' is not a zip file: split takes a dataset zip written by dataset_tool.py.")
    for dest in (dest_a, dest_b):
        if Path(dest).exists() and not force:
            raise UserError(f"'{dest}' already exists; pass --force to overwrite it or choose another path.")
    from training.dataset import _is_image_name
    with zipfile.ZipFile(source) as z:
        names = sorted(n for n in z.namelist() if _is_image_name(n))
        count_b = len(names) - count_a if count_b is None else count_b
        if count_a < 1 or count_b < 1 or count_a + count_b > len(names):
            raise UserError(f"Cannot take {count_a} + {count_b} images from '{source}' ({len(names)} images): both "
                            f"parts need at least one image and together at most {len(names)}.")
        perm = np.random.default_rng(seed).permutation(len(names))
        parts = {"a": sorted(names[i] for i in perm[:count_a]),
                 "b": sorted(names[i] for i in perm[count_a:count_a + count_b])}
        meta = json.loads(z.read("dataset.json")) if "dataset.json" in z.namelist() else None
        for part, dest in (("a", dest_a), ("b", dest_b)):
            _write_part(z, Path(dest), parts[part], _split_meta(meta, parts[part], part, str(source), seed))
    return parts["a"], parts["b"]


def _write_part(src: zipfile.ZipFile, dest: Path, names: list[str], meta: dict) -> None:
    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
            for name in names:
                out.writestr(name, src.read(name))
            out.writestr("dataset.json", json.dumps(meta))
    util.atomic_write(dest, write)


# ---------------------------------------------------------------------------------------------------------------------
# Running commands: printed, recorded in commands.txt, run as subprocesses.

class StepFailed(UserError):
    """A subprocess of the study exited with a non-zero status."""


class MetricsFailed(StepFailed):
    """A metrics step failed; the run's snapshots are intact and the next invocation computes what is missing."""


def device_name() -> str:
    """The accelerator this study runs on (GPU 0's name), or the CPU."""
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def _script(name: str) -> str:
    """A repository script as the shortest path from the current directory."""
    rel = os.path.relpath(REPO / name)
    return rel if not rel.startswith("..") else str(REPO / name)


class Recorder:
    """Runs the study's commands: prints each, appends it to <outdir>/commands.txt, runs it, records sessions."""

    def __init__(self, outdir: Path, device: str) -> None:
        self.outdir, self.device = outdir, device
        self.path = outdir / "commands.txt"
        self.lock = threading.Lock()          # --jobs: several runs record their commands at once
        self.stopping = False                 # set by SIGTERM / SIGINT: no new step starts
        self.children: set[subprocess.Popen] = set()

    def _append(self, lines: list[str]) -> None:
        # One O_APPEND write per record: records of concurrent runs (threads or processes) never overwrite each other.
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))

    def stop(self, signum: int, _frame: Any = None) -> None:
        """Signal handler: pass the signal on to running steps (train.py writes a training state on SIGTERM and
        exits; `run` continues it later) and start nothing new."""
        self.stopping = True
        for child in list(self.children):
            with contextlib.suppress(OSError):
                child.send_signal(signum)

    def run(self, argv: list[str], label: str, session_file: Path | None = None, capture: bool = False) -> str:
        """Run `python ARGV...` (this interpreter). Returns its stdout when `capture`. Raises StepFailed."""
        shown = shlex.join(["python", *argv])
        if self.stopping:
            raise StepFailed(f"[{label}] not started: the study was interrupted")
        print(f"\n[{label}] $ {shown}", flush=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._append([f"# {started} [{label}] on {self.device}", shown])
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE if capture else None, text=True)
        with self.lock:
            self.children.add(proc)
        try:
            stdout, _ = proc.communicate()
        finally:
            with self.lock:
                self.children.discard(proc)
        seconds = time.time() - t0
        if capture:
            print(stdout, end="", flush=True)
        if session_file is not None:
            meta = json.loads(session_file.read_text(encoding="utf-8")) if session_file.is_file() else {}
            meta.setdefault("sessions", []).append(dict(stage=label, command=shown, started=started,
                                                        seconds=round(seconds, 1), returncode=proc.returncode))
            meta["device"] = self.device
            util.atomic_write_text(session_file, json.dumps(meta, indent=2) + "\n")
        if proc.returncode != 0:
            self._append([f"# ^ [{label}] failed with exit status {proc.returncode}"])
            raise StepFailed(f"[{label}] failed with exit status {proc.returncode}: {shown}")
        return stdout if capture else ""

    def note(self, text: str) -> None:
        print(f"[skip] {text}", flush=True)
        self._append([f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} skipped: {text}"])


# ---------------------------------------------------------------------------------------------------------------------
# The study.

SMOKE = dict(kimg=0.02, snap_kimg=0.01, count=64, resolution=32)


_METRICS_SLOTS: dict[int, threading.BoundedSemaphore] = {}


def _metrics_slot(opts: dict) -> threading.BoundedSemaphore:
    """The semaphore that bounds how many metrics steps run at once (--metric-jobs; one per value, shared by runs)."""
    n = opts.get("metric_jobs", 1)
    return _METRICS_SLOTS.setdefault(n, threading.BoundedSemaphore(n))


def _done_kimg(run_dir: Path) -> float | None:
    """The kimg of the last 'Done: X kimg' line of log.txt (train.py prints it when it reaches --kimg)."""
    log = run_dir / "log.txt"
    found = re.findall(r"^Done: ([\d.]+) kimg", log.read_text(encoding="utf-8", errors="replace"), re.M) \
        if log.is_file() else []
    return float(found[-1]) if found else None


def _metrics_missing(run_dir: Path) -> bool:
    """Whether some network snapshot of the run directory lacks a record of some study metric."""
    from metrics.metric_main import read_metric_jsonl
    snaps = [p.name for p in run_dir.glob("network-snapshot-*.pkl")]
    return any(all(r.get("snapshot_pkl") != snap for r in read_metric_jsonl(run_dir, m))
               for snap in snaps for m in results.METRICS)


def _train_stage(rec: Recorder, opts: dict, run: results.PlannedRun, stage: str, kimg: float,
                 extra: list[str]) -> None:
    """Train one stage (start | train) of a study run to `kimg` (fresh, resumed or skipped), then fill in metrics."""
    root = Path(opts["outdir"]) / "runs" / run.name
    stage_root, session = root / stage, root / "reproduce.json"
    label = f"{run.name} {stage}"
    from training.state import latest_state
    run_dir = results.find_run_dir(stage_root)
    # Metrics at each snapshot inside train.py: always with the installed detector; with --detector only when asked
    # (--metrics-in-training: no calc_metrics process afterwards, every run's metrics while it trains).
    in_training = opts["detector"] is None or opts.get("metrics_in_training", False)
    study_sets = [a for kv in opts.get("train_set", []) for a in ("--set", kv)]
    if in_training and opts["detector"] is not None:
        study_sets += ["--set", f"metrics_detector={opts['detector']}"]
    argv = [_script("train.py"), "--cfg", run.cfg, "--data", opts["data"][run.family], "--seed", str(run.seed),
            "--kimg", f"{kimg:g}", "--metrics", ",".join(results.METRICS) if in_training else "none", *study_sets,
            *extra]
    done = run_dir is not None and (_done_kimg(run_dir) or -1.0) >= kimg - 1e-6
    if done:
        rec.note(f"{label}: trained to {kimg:g} kimg in {run_dir}")
    elif run_dir is not None and latest_state(run_dir) is not None:
        rec.run(argv + ["--outdir", str(run_dir), "--resume", "auto"], label + " (resume)", session)
    else:
        rec.run(argv + ["--outdir", str(stage_root)], label, session)
    run_dir = results.find_run_dir(stage_root)
    if run_dir is not None and _metrics_missing(run_dir):
        det = ["--detector", opts["detector"]] if opts["detector"] else []
        # --metric-jobs steps at a time (default one): with --jobs 6, six at once ran an 80 GB GPU out of memory
        with _metrics_slot(opts):
            try:
                rec.run([_script("calc_metrics.py"), "--network", str(run_dir), "--metrics",
                         ",".join(results.METRICS), "--seed", str(run.seed), *det], label + " metrics", session)
            except StepFailed as exc:
                raise MetricsFailed(str(exc)) from exc


def train_run(rec: Recorder, opts: dict, run: results.PlannedRun) -> None:
    """The 0-kimg point (one minibatch) and the full-length run of one planned run."""
    from training.config import resolve_config
    batch = resolve_config(run.cfg).batch
    # A failed metrics step of the 0-kimg point does not hold the training back (a flaky metrics step would
    # otherwise cost whole runs); it is reported after the training, and the next invocation fills the metric in.
    deferred = None
    try:
        # One minibatch: the plain eager step (no CUDA graphs, no compilation to pay for), same function.
        _train_stage(rec, opts, run, "start", batch / 1000, ["--impl", "reference"])
    except MetricsFailed as exc:
        deferred = exc
    _train_stage(rec, opts, run, "train", opts["kimg"],
                 ["--snap", "1", "--set", f"kimg_per_tick={opts['snap_kimg']:g}", "--set", "image_snap=1"])
    if deferred is not None:
        raise deferred


def ensure_dataset(rec: Recorder, opts: dict, family: str) -> str:
    """<outdir>/data/<family>-<res>-<count>.zip, rendered by dataset_tool.py synth (seed 0) when missing."""
    dest = Path(opts["outdir"]) / "data" / f"{family}-{opts['resolution']}-{opts['count']}.zip"
    if dest.is_file():
        rec.note(f"data set {dest} exists")
    else:
        rec.run([_script("dataset_tool.py"), "synth", "--family", family, "--count", str(opts["count"]),
                 "--resolution", str(opts["resolution"]), "--seed", "0", "--dest", str(dest)], f"data {family}")
    return str(dest)


def noise_floor(rec: Recorder, opts: dict, label: str, kind: str, set_a: str, set_b: str) -> None:
    """calc_metrics.py --data A --compare B; the parsed results go to <outdir>/floors/<label>.json."""
    dest = Path(opts["outdir"]) / "floors" / f"{label}.json"
    if dest.is_file():
        rec.note(f"noise floor {dest} exists")
        return
    det = ["--detector", opts["detector"]] if opts["detector"] else []
    argv = [_script("calc_metrics.py"), "--data", set_a, "--compare", set_b, "--metrics", ",".join(results.METRICS),
            *det]
    t0 = time.time()
    text = rec.run(argv, f"floor {label}", capture=True)
    record = dict(label=label, kind=kind, set_a=set_a, set_b=set_b, command=shlex.join(["python", *argv]),
                  seconds=round(time.time() - t0, 1), device=rec.device, **results.parse_compare_output(text))
    util.atomic_write_text(dest, json.dumps(record, indent=2) + "\n")


def noise_floors(rec: Recorder, opts: dict) -> None:
    """Per family: two disjoint halves of its training set; plus one cross-family pair as a large reference."""
    floors = Path(opts["outdir"]) / "floors"
    halves = {}
    for fam in opts["families"]:
        a, b = floors / f"{fam}-half-a.zip", floors / f"{fam}-half-b.zip"
        if not (a.is_file() and b.is_file()):
            rec.run([_script("scripts/reproduce.py"), "split", "--source", opts["data"][fam], "--dest-a", str(a),
                     "--dest-b", str(b), "--count-a", str(opts["count"] // 2), "--seed", "0", "--force"],
                    f"split {fam}")
        halves[fam] = (str(a), str(b))
        noise_floor(rec, opts, f"{fam}-halves", "halves", *halves[fam])
    fams = opts["families"]
    pair = ("cars", "chairs") if {"cars", "chairs"} <= set(fams) else tuple(fams[:2]) if len(fams) > 1 else None
    if pair:
        noise_floor(rec, opts, f"{pair[0]}-vs-{pair[1]}", "cross", halves[pair[0]][0], halves[pair[1]][1])


def figures(rec: Recorder, opts: dict, run: results.PlannedRun) -> None:
    """Contact sheet (pose 30,30) and interpolation strip + video of a finished run's last snapshot."""
    fig = Path(opts["outdir"]) / "figures"
    sheet, strip, video = fig / f"{run.family}_sheet.png", fig / f"{run.family}_interp.png", \
        fig / f"{run.family}_interp.mp4"
    run_dir = results.find_run_dir(Path(opts["outdir"]) / "runs" / run.name / "train")
    snaps = sorted(run_dir.glob("network-snapshot-*.pkl")) if run_dir is not None else []
    if not snaps or (_done_kimg(run_dir) or -1.0) < opts["kimg"] - 1e-6:
        rec.note(f"figures of {run.family}: {run.name} has not finished")
        return
    small = opts["smoke"]
    if not sheet.is_file():
        rec.run([_script("generate.py"), "images", "--network", str(snaps[-1]), "--seeds", "0-3" if small else "0-15",
                 "--pose", "30,30", "--outdir", str(fig / f"{run.family}_images"), "--sheet", str(sheet)],
                f"sheet {run.family}")
    if not strip.is_file():
        rec.run([_script("generate.py"), "interp", "--network", str(snaps[-1]), "--seeds", "0-2" if small else "0-4",
                 "--frames", "4" if small else "120", "--steps", "3" if small else "10", "--out", str(video),
                 "--force"], f"interp {run.family}")


def _merge_study(outdir: Path, opts: dict) -> dict:
    """Record the options in <outdir>/study.json; lists are merged with an earlier invocation's (the report shows
    every run ever planned here). Data-defining options must match: a different set needs another --outdir."""
    path = outdir / "study.json"
    keys = ("kimg", "snap_kimg", "count", "resolution", "smoke", "detector", "ablation_family", "spread_family",
            "train_set")
    study = {k: opts[k] for k in keys} | {k: list(opts[k]) for k in ("families", "ablations", "seeds")}
    study["setting"] = opts.get("setting", "t4")
    study["ablation_seeds"] = results.ablation_seeds(opts)
    if path.is_file():
        old = {"train_set": [], "setting": "t4",                      # studies from before --set / --setting
               **json.loads(path.read_text(encoding="utf-8"))}
        clash = [k for k in ("count", "resolution", "smoke", "snap_kimg", "train_set", "setting")
                 if k in old and old[k] != study[k]]
        if clash:
            raise UserError(f"'{outdir}' holds a study with other {', '.join(clash)} "
                            f"({', '.join(f'{k}={old[k]}' for k in clash)}); use a new --outdir for a different "
                            f"study, or the same values to continue it.")
        old["ablation_seeds"] = results.ablation_seeds(old)            # study.json from before --ablation-seeds
        for k in ("families", "ablations", "seeds", "ablation_seeds"):
            study[k] = list(dict.fromkeys(old.get(k, []) + study[k]))
    util.atomic_write_text(path, json.dumps(study, indent=2) + "\n")
    return study


def report_order(outdir: Path, report_with: list[str]) -> list[Path]:
    """The study directories of the report (--report-with: docs/studies/REPORT.md holds several studies):
    this study first, then the others; where it is one of them, their order as given."""
    others = [Path(d) for d in report_with]
    return others if any(d.resolve() == Path(outdir).resolve() for d in others) else [Path(outdir), *others]


def side_by_side_env(jobs: int, environ: dict | os._Environ = os.environ) -> str | None:
    """--jobs > 1 (several processes on one GPU, under NVIDIA MPS): the backend's off switch HNG_KERNELS=0 for every
    step, unless the caller set it. A Triton kernel's self-check that faults breaks every client of the MPS server
    (every run of a study once died at its start that way); the metrics and Dmain's fakes then render on the PyTorch
    path, G's layers train on cuBLAS and R1's filter runs as a depthwise conv. Returns the note to record, or None."""
    name = "HNG_KERNELS"
    if jobs <= 1 or name in environ:
        return None
    environ[name] = "0"
    return (f"--jobs {jobs}: {name}=0 for every step (a faulting Triton self-check breaks every process sharing the "
            f"GPU under MPS; set {name}=1 to keep the kernels)")


def run_study(opts: dict) -> tuple[Path, list[str]]:
    """Everything `reproduce.py run` does (see the module docstring). Returns (report path, failed steps).

    A failed step is recorded and the study goes on with the steps that do not depend on it.
    """
    outdir = Path(opts["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    _merge_study(outdir, opts)
    rec = Recorder(outdir, device_name())
    env_note = side_by_side_env(opts.get("jobs", 1))
    if env_note:
        print(f"[env] {env_note}", flush=True)
        rec._append([f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} env: {env_note}"])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, rec.stop)
    failures: list[str] = []

    def attempt(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StepFailed as exc:
            failures.append(str(exc))
            print(f"Error: {exc} (continuing with the next step)", file=sys.stderr, flush=True)
            return None
    needed = opts["families"] + [opts["ablation_family"]] * bool(opts["ablations"]) \
        + [opts["spread_family"]] * (len(opts["seeds"]) > 1)
    data = {fam: attempt(ensure_dataset, rec, opts, fam) for fam in dict.fromkeys(needed)}
    opts["data"] = {fam: path for fam, path in data.items() if path is not None}
    plan = results.plan_runs(opts["families"], opts["ablations"], opts["seeds"], opts["ablation_family"],
                             opts["spread_family"], opts["smoke"], opts.get("ablation_seeds"),
                             opts.get("setting", "t4"))
    runs = [run for run in plan if run.family in opts["data"]]
    if opts.get("jobs", 1) > 1:   # independent runs side by side (on one GPU: worth it with NVIDIA MPS, see README)
        with concurrent.futures.ThreadPoolExecutor(opts["jobs"]) as pool:
            list(pool.map(lambda r: attempt(train_run, rec, opts, r), runs))
    else:
        for run in runs:
            attempt(train_run, rec, opts, run)
    if all(f in opts["data"] for f in opts["families"]):
        attempt(noise_floors, rec, opts)
    for run in plan[:len(opts["families"])]:
        attempt(figures, rec, opts, run)
    if rec.stopping:
        failures.append("interrupted by a signal: running training runs saved their state; run the same command "
                        "again to continue")
        return Path(opts["report"]), failures
    cpu_json = REPO / "docs" / "noise_floors.json"
    use_cpu = cpu_json.is_file() and not opts["smoke"]
    order = report_order(outdir, opts.get("report_with", []))
    report = results.build_report(order[0], opts["report"], cpu_json if use_cpu else None,
                                  full_plan=opts.get("full_plan", False), also=order[1:])
    print(f"\nWrote {report}" + (f"; {len(failures)} step(s) failed" if failures else ""), flush=True)
    return report, failures


# ---------------------------------------------------------------------------------------------------------------------
# Command line.

@click.group()
def cli() -> None:
    """The seed's reproduction study: run it, report it, split data sets for noise floors."""


@cli.command()
@click.option("--source", required=True, help="Dataset zip to split.")
@click.option("--dest-a", required=True, help="Output zip of part A (the 'reals' of a noise floor).")
@click.option("--dest-b", required=True, help="Output zip of part B (the 'fakes').")
@click.option("--count-a", type=click.IntRange(min=1), required=True, help="Images in part A.")
@click.option("--count-b", type=click.IntRange(min=1), default=None, help="Images in part B [default: the rest].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Permutation seed.")
@click.option("--force", is_flag=True, help="Overwrite existing output zips.")
def split(source: str, dest_a: str, dest_b: str, count_a: int, count_b: int | None, seed: int, force: bool) -> None:
    """Split a dataset zip into two disjoint zips (seeded permutation), e.g. for FID noise floors."""
    a, b = split_zip(source, dest_a, dest_b, count_a, count_b, seed=seed, force=force)
    click.echo(f"Wrote {dest_a} ({len(a)} images) and {dest_b} ({len(b)} images) from {source} (seed {seed}).")


def _setting(name: str) -> str:
    """--setting: a preset that is neither a family, an ablation nor `smoke`."""
    from training.config import list_presets
    valid = [p for p in list_presets() if p not in (*results.FAMILIES, *results.ABLATIONS, "smoke")]
    if name not in valid:
        raise UserError(f"--setting '{name}' is not one of {', '.join(valid)}.")
    return name


def _names(spec: str, valid: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise UserError(f"Unknown {what} {', '.join(bad)}: choose from {', '.join(valid)}.")
    return list(dict.fromkeys(names))


@cli.command()
@click.option("--outdir", required=True, help="Study directory (data, runs, floors, figures, commands.txt).")
@click.option("--families", default=",".join(results.FAMILIES), show_default=True, help="Synthetic families.")
@click.option("--ablations", default=",".join(results.ABLATIONS), show_default=True,
              help="Ablation presets on the ablation family ('' for none).")
@click.option("--ablation-family", default="cars", show_default=True, help="Family of the ablations.")
@click.option("--seeds", default="0,1", show_default=True,
              help="Seeds: the first for every run, the others for the spread family's baseline.")
@click.option("--spread-family", default="cars", show_default=True, help="Family trained with every seed.")
@click.option("--setting", default="t4", show_default=True,
              help="Preset after the family preset in every run: t4 (the T4 study), standard, or a recipe of "
                   "configs/recipes/ (e.g. t4-whole). Another setting needs another --outdir.")
@click.option("--ablation-seeds", default=None,
              help="Seeds of the ablation runs, each with the ablation family's baseline at that seed [default: "
                   "the first of --seeds]; e.g. --seeds 0 --ablation-seeds 1 adds seed-1 ablations to a study.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None, help="Training length [200].")
@click.option("--snap-kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="kimg per tick = per snapshot and metric evaluation [50].")
@click.option("--count", type=click.IntRange(min=4), default=None, help="Images per synthetic set [10000].")
@click.option("--resolution", type=click.IntRange(min=8), default=None, help="Image size [128].")
@click.option("--detector", default=None, help="Feature detector file [default: the official Inception].")
@click.option("--smoke", is_flag=True, help="Tiny settings for a CPU check: smoke preset, 64 images at 32 px, "
              "0.02 kimg, snapshots every 0.01 kimg.")
@click.option("--report", "report", default=None,
              help="Markdown report [default: docs/studies/REPORT.md; with --smoke <outdir>/RESULTS.md].")
@click.option("--report-with", "report_with", multiple=True, metavar="DIR",
              help="Another study directory for the same report (repeatable; as `report --outdir A --outdir B`); "
                   "see docs/RESULTS.md for the command that rebuilds docs/studies/REPORT.md.")
@click.option("--full-plan", is_flag=True, help="The report lists every run of the full study ('not run' rows).")
@click.option("--set", "train_set", multiple=True, metavar="KEY=VALUE",
              help="Config override passed to every train.py run of the study (repeatable), e.g. d_lr=0.001.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training runs side by side (each with its metrics); on one GPU use NVIDIA MPS (see README).")
@click.option("--metric-jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Metrics steps (calc_metrics.py) of --jobs runs at once; each can take several GB of GPU memory.")
@click.option("--metrics-in-training", is_flag=True,
              help="With --detector: train.py evaluates each snapshot as it is written (--set metrics_detector=...) "
                   "instead of calc_metrics.py after the run; all --jobs runs may then evaluate at once.")
def run(outdir: str, families: str, ablations: str, ablation_family: str, seeds: str, spread_family: str,
        setting: str, ablation_seeds: str | None,
        kimg: float | None, snap_kimg: float | None, count: int | None, resolution: int | None,
        detector: str | None, smoke: bool, report: str | None, train_set: tuple[str, ...], jobs: int,
        metric_jobs: int, metrics_in_training: bool, report_with: tuple[str, ...], full_plan: bool) -> None:
    """Run (or continue) the whole study, then write the report. Finished steps are skipped."""
    defaults = SMOKE if smoke else dict(kimg=200.0, snap_kimg=50.0, count=10000, resolution=128)
    given = dict(kimg=kimg, snap_kimg=snap_kimg, count=count, resolution=resolution)
    opts = {k: (v if v is not None else defaults[k]) for k, v in given.items()}
    fams = list(results.FAMILIES)
    from training.config import resolve_config
    for kv in train_set:   # validate now: a typo must not surface as nine failed training runs
        resolve_config("t4", sets=[kv])
    opts |= dict(outdir=outdir, families=_names(families, fams, "family"), smoke=smoke, jobs=jobs,
                 metric_jobs=metric_jobs, metrics_in_training=metrics_in_training, train_set=list(train_set),
                 report_with=list(report_with), full_plan=full_plan,
                 ablations=_names(ablations, results.ABLATIONS, "ablation"),
                 ablation_family=_names(ablation_family, fams, "family")[0], seeds=util.parse_int_list(seeds),
                 ablation_seeds=util.parse_int_list(ablation_seeds) if ablation_seeds else None,
                 spread_family=_names(spread_family, fams, "family")[0], setting=_setting(setting),
                 detector=str(Path(detector).resolve()) if detector else None,
                 report=report or str(Path(outdir) / "RESULTS.md" if smoke
                                      else REPO / "docs" / "studies" / "REPORT.md"))
    if not opts["families"]:
        raise UserError("--families is empty: name at least one of " + ", ".join(fams) + ".")
    if detector and not Path(detector).is_file():
        raise UserError(f"--detector '{detector}' does not exist; pass a TorchScript detector file or drop it.")
    _, failures = run_study(opts)
    if failures:
        raise UserError(f"{len(failures)} step(s) failed:\n  " + "\n  ".join(failures)
                        + "\nFix the cause and run the same command again: finished steps are skipped.")


cli.add_command(results.cli, name="report")


@cli.command()
@click.option("--outdir", required=True, help="Study directory with runs/ (what `run --outdir` was given).")
@click.option("--out", default=None, help="Summary file to write [default: <outdir>/summary.json].")
def summarize(outdir: str, out: str | None) -> None:
    """Keep a finished study in compact form: every number the report reads, in one JSON file.

    `report --outdir DIR` then works from DIR/summary.json once DIR/runs is deleted (figures/ and DISCUSSION.md
    stay as they are)."""
    path = results.summarize(outdir, out)
    click.echo(f"Wrote {path}")


main = util.run_cli(cli)

if __name__ == "__main__":
    main()
