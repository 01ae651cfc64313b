"""The CPU proxy study of whole-object training (docs/WHOLE_OBJECTS.md): small cars runs that reproduce the repeated-
parts failure of the reference crops in minutes per run, and the same runs with the whole-object recipes.

    python scripts/whole_objects_study.py run --outdir RUNS [--only NAME ...]   # train + FID-1k + precision/recall
    python scripts/whole_objects_study.py report --outdir RUNS --docs docs/whole_objects

`run` trains each planned run that has no final snapshot yet (one process at a time; start two `run` commands with
disjoint --only lists to use two cores), then evaluates fid1k_full and pr1k3_full on its last snapshot on the CPU.
`report` writes summary.json (the numbers of every run; rows already there for runs trained elsewhere are kept), one
contact sheet per data resolution, seed and run length (the last G_ema grid of each run, rows = runs) and prints the
Markdown table. Every run: synthetic cars (2,000 images), `--cfg cars,[RECIPE,]smoke --set num_layers=4`, 16 px
patches, 10 kimg (the four runs named *-k20: 20 kimg), one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIMG = 10                                                   # every run's length, but the longer runs of LONG
LONG = {"kimg": 20, "seed": 0, "runs": [(64, "ref"), (64, "beta-cond"), (32, "ref"), (32, "beta-cond")]}
METRICS = ("fid1k_full", "pr1k3_full")
COMMON = ["--set", "num_layers=4", "--set", "synth_count=2000", "--set", "kimg_per_tick=2", "--set", "snap=5",
          "--set", "image_snap=5", "--metrics", "none"]
ANNEAL = ["--set", "patch_scale=beta:0.001:0.8:{kimg}"]    # the recipes' law, annealed over the run
# name -> (presets, extra --set items ({kimg}: the run's length), what it is)
VARIANTS = {
    "ref": ("cars,smoke", [], "reference crops (faithful law), reference d_lr 0.0025"),
    "ref-dlr": ("cars,smoke", ["--set", "d_lr=0.001"], "reference crops, d_lr 0.001"),
    "beta": ("cars,t4-whole-uncond,smoke", ANNEAL, "t4-whole-uncond: beta law 0.001 -> 0.8, plain D, d_lr 0.001"),
    "beta-cond": ("cars,t4-whole,smoke", ANNEAL, "t4-whole: beta law 0.001 -> 0.8, scale-aware D, d_lr 0.001"),
    "beta-cond-d25": ("cars,t4-whole,smoke", ANNEAL + ["--set", "d_lr=0.0025"],
                      "t4-whole with the reference d_lr 0.0025"),
    "unif-cond": ("cars,t4-whole,smoke", ["--set", "patch_scale=uniform:1:0:{kimg}"],
                  "uniform law, lower bound 1 -> s_min, scale-aware D, d_lr 0.001"),
}


def plan() -> list[dict]:
    runs = []
    for seed in (0, 1):
        for res in (64, 32):
            for var in VARIANTS:
                runs.append(dict(name=f"r{res}-{var}-s{seed}", res=res, variant=var, seed=seed, kimg=KIMG))
    for res, var in LONG["runs"]:
        runs.append(dict(name=f"r{res}-{var}-s{LONG['seed']}-k{LONG['kimg']}", res=res, variant=var,
                         seed=LONG["seed"], kimg=LONG["kimg"]))
    return runs


def train_args(run: dict, outdir: Path) -> list[str]:
    presets, extra, _ = VARIANTS[run["variant"]]
    return ["train.py", "--outdir", str(outdir / run["name"]), "--cfg", presets, "--seed", str(run["seed"]),
            "--kimg", str(run["kimg"]), "--set", f"synth_resolution={run['res']}", *COMMON,
            *(x.format(kimg=run["kimg"]) for x in extra)]


def run_dir_of(outdir: Path, run: dict) -> Path | None:
    root = outdir / run["name"]
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return dirs[-1] if dirs else None


def final_snapshot(run_dir: Path | None, kimg: int) -> Path | None:
    snaps = sorted(run_dir.glob("network-snapshot-*.pkl")) if run_dir else []
    return snaps[-1] if snaps and snaps[-1].name == f"network-snapshot-{kimg:06d}.pkl" else None


def do_run(run: dict, outdir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if final_snapshot(run_dir_of(outdir, run), run["kimg"]) is None:
        print(" ".join(["python", *train_args(run, outdir)]), flush=True)
        subprocess.run([sys.executable, *train_args(run, outdir)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    snap = final_snapshot(run_dir_of(outdir, run), run["kimg"])
    args = [sys.executable, "calc_metrics.py", "--network", str(snap), "--metrics", ",".join(METRICS),
            "--device", "cpu", "--impl", "reference"]
    print(" ".join(["python", *args[1:]]), flush=True)
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def last_metric(run_dir: Path, name: str) -> dict:
    lines = (run_dir / f"metric-{name}.jsonl").read_text().splitlines() if (run_dir / f"metric-{name}.jsonl"
                                                                           ).is_file() else []
    return json.loads(lines[-1])["results"] if lines else {}


def collect(outdir: Path) -> list[dict]:
    rows = []
    for run in plan():
        rd = run_dir_of(outdir, run)
        if rd is None or final_snapshot(rd, run["kimg"]) is None:
            continue
        fid, pr = last_metric(rd, "fid1k_full"), last_metric(rd, "pr1k3_full")
        stats = [json.loads(x) for x in (rd / "stats.jsonl").read_text().splitlines()]
        mean = lambda k: stats[-1].get(k, {}).get("mean")  # noqa: E731
        train_sec = sum(s["Timing/sec_per_tick"]["mean"] for s in stats)
        rows.append(dict(**run, what=VARIANTS[run["variant"]][2], fid1k=fid.get("fid1k_full"),
                         precision=pr.get("pr1k3_full_precision"), recall=pr.get("pr1k3_full_recall"),
                         d_whole_gap=mean("Progress/D_whole_gap"), opacity=mean("Progress/G_ema_opacity"),
                         mean_scale=mean("PatchScale/scale"), train_sec=round(train_sec, 1),
                         command="python " + " ".join(train_args(run, Path("RUNS")))))
    return rows


def sheet_path(docs: Path, res: int, seed: int, kimg: int = KIMG) -> Path:
    return docs / f"contact-{res}px{f'-s{seed}' if seed else ''}{f'-k{kimg}' if kimg != KIMG else ''}.png"


def sheet_key(run: dict) -> tuple[int, int, int]:
    return run["res"], run["seed"], run.get("kimg", KIMG)


def contact_sheets(outdir: Path, rows: list[dict], docs: Path, recorded: list[dict]) -> list[Path]:
    """One PNG per data resolution, seed and run length with a run in `rows`: the first row of reals.png, then each
    run's last G_ema grid (its first row: 4 renders of fixed latents and poses), one labelled row each, in
    summary.json's order. The rows of runs that summary.json records but `outdir` lacks (trained elsewhere) are
    taken from the sheet already written, whose rows follow the recorded order."""
    import PIL.Image
    import PIL.ImageDraw
    out = []
    merged = merge(recorded, rows)
    local = {r["name"]: r for r in rows}
    for key in sorted({sheet_key(r) for r in rows}, key=lambda k: (k[2], -k[0], k[1])):
        res, path = key[0], sheet_path(docs, *key)
        sheet_rows = [r for r in merged if sheet_key(r) == key]
        old_names = [r["name"] for r in recorded if sheet_key(r) == key]
        old = None
        if any(r["name"] not in local for r in sheet_rows):
            old = PIL.Image.open(path).convert("RGB") if path.is_file() else None
            if old is None or old.height != (1 + len(old_names)) * res:
                sys.exit(f"{path} does not hold the {len(old_names)} recorded runs of its sheet: run report with "
                         f"every run of the sheet in --outdir.")

        def tile(run: dict, png: str, label: str) -> "PIL.Image.Image":
            grid = PIL.Image.open(run_dir_of(outdir, run) / png).convert("RGB")
            t = PIL.Image.new("RGB", (150 + grid.width, res), "white")
            PIL.ImageDraw.Draw(t).text((4, res // 2 - 6), label, fill="black")
            t.paste(grid.crop((0, 0, grid.width, res)), (150, 0))          # the first grid row: 4 renders
            return t

        first_local = next((r for r in sheet_rows if r["name"] in local), None)
        tiles = [tile(first_local, "reals.png", "reals")]
        for r in sheet_rows:
            if r["name"] in local:
                tiles.append(tile(local[r["name"]], f"fakes{r['kimg']:06d}.png", r["name"]))
            else:
                i = 1 + old_names.index(r["name"])
                tiles.append(old.crop((0, i * res, old.width, (i + 1) * res)))
        sheet = PIL.Image.new("RGB", (max(t.width for t in tiles), res * len(tiles)), "white")
        for i, t in enumerate(tiles):
            sheet.paste(t, (0, i * res))
        sheet.save(path.with_suffix(".tmp.png"))
        os.replace(path.with_suffix(".tmp.png"), path)
        out.append(path)
    return out


def merge(recorded: list[dict], rows: list[dict]) -> list[dict]:
    """summary.json's rows with this outdir's runs added or replacing the rows of the same name, in plan order."""
    by_name = {r["name"]: r for r in recorded} | {r["name"]: r for r in rows}
    order = [r["name"] for r in plan()]
    return sorted(by_name.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))


def table(rows: list[dict]) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = ["| data | run | what | FID-1k | precision / recall | D whole-frame gap | mean scale | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['res']} px | {r['name']} | {r['what']} | {fmt(r['fid1k'], '.1f')} | "
                     f"{fmt(r['precision'], '.3f')} / {fmt(r['recall'], '.4f')} | {fmt(r['d_whole_gap'], '.2f')} | "
                     f"{fmt(r['mean_scale'], '.2f')} | {fmt(r['train_sec'], '.0f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "report", "plan"])
    ap.add_argument("--outdir", default="runs/whole_objects")
    ap.add_argument("--only", nargs="*", default=None, help="run names (default: every planned run)")
    ap.add_argument("--docs", default="docs/whole_objects")
    a = ap.parse_args()
    outdir = Path(a.outdir).resolve()
    by_name = {r["name"]: r for r in plan()}
    unknown = [n for n in a.only or [] if n not in by_name]
    if unknown:
        sys.exit(f"Unknown run name(s) {', '.join(unknown)}: see `{Path(__file__).name} plan` for the planned runs.")
    runs = plan() if a.only is None else [by_name[n] for n in a.only]        # in the order given
    if a.command == "plan":
        for r in runs:
            print(r["name"], "python", " ".join(train_args(r, outdir)))
    elif a.command == "run":
        for r in runs:
            do_run(r, outdir)
    else:
        docs = Path(a.docs)
        docs.mkdir(parents=True, exist_ok=True)
        summary = docs / "summary.json"
        recorded = json.loads(summary.read_text()) if summary.is_file() else []
        rows = collect(outdir)
        merged = merge(recorded, rows)
        tmp = docs / "summary.json.tmp"
        tmp.write_text(json.dumps(merged, indent=1) + "\n")
        os.replace(tmp, summary)
        contact_sheets(outdir, rows, docs, recorded)
        print(table(merged))


if __name__ == "__main__":
    main()
