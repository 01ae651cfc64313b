"""The CPU proxy study of whole-object training (docs/WHOLE_OBJECTS.md): small cars runs that reproduce the repeated-
parts failure of the reference crops in minutes per run, and the same runs with the whole-object recipes.

    python scripts/whole_objects_study.py run --outdir RUNS [--only NAME ...]   # train + FID-1k + precision/recall
    python scripts/whole_objects_study.py report --outdir RUNS --docs docs/whole_objects

`run` trains each planned run that has no final snapshot yet (one process at a time; start two `run` commands with
disjoint --only lists to use two cores), then evaluates fid1k_full and pr1k3_full on its last snapshot on the CPU.
`report` writes summary.json (the numbers of every run; rows already there for runs trained elsewhere are kept), one
contact sheet per data resolution and seed (the last G_ema grid of each run, rows = runs) and prints the Markdown
table. Every run: synthetic cars (2,000 images), `--cfg
cars,[RECIPE,]smoke --set num_layers=4`, 16 px patches, 10 kimg, one thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIMG = 10
METRICS = ("fid1k_full", "pr1k3_full")
COMMON = ["--set", "num_layers=4", "--set", "synth_count=2000", "--set", "kimg_per_tick=2", "--set", "snap=5",
          "--set", "image_snap=5", "--metrics", "none"]
ANNEAL = ["--set", f"patch_scale=beta:0.001:0.8:{KIMG}"]   # the recipes' law, annealed over the run
# name -> (presets, extra --set items, what it is)
VARIANTS = {
    "ref": ("cars,smoke", [], "reference crops (faithful law), reference d_lr 0.0025"),
    "ref-dlr": ("cars,smoke", ["--set", "d_lr=0.001"], "reference crops, d_lr 0.001"),
    "beta": ("cars,t4-whole-uncond,smoke", ANNEAL, "t4-whole-uncond: beta law 0.001 -> 0.8, plain D, d_lr 0.001"),
    "beta-cond": ("cars,t4-whole,smoke", ANNEAL, "t4-whole: beta law 0.001 -> 0.8, scale-aware D, d_lr 0.001"),
    "beta-cond-d25": ("cars,t4-whole,smoke", ANNEAL + ["--set", "d_lr=0.0025"],
                      "t4-whole with the reference d_lr 0.0025"),
    "unif-cond": ("cars,t4-whole,smoke", ["--set", f"patch_scale=uniform:1:0:{KIMG}"],
                  "uniform law, lower bound 1 -> s_min, scale-aware D, d_lr 0.001"),
}


def plan() -> list[dict]:
    runs = []
    for seed in (0, 1):
        for res in (64, 32):
            for var in VARIANTS:
                runs.append(dict(name=f"r{res}-{var}-s{seed}", res=res, variant=var, seed=seed))
    return runs


def train_args(run: dict, outdir: Path) -> list[str]:
    presets, extra, _ = VARIANTS[run["variant"]]
    return ["train.py", "--outdir", str(outdir / run["name"]), "--cfg", presets, "--seed", str(run["seed"]),
            "--kimg", str(KIMG), "--set", f"synth_resolution={run['res']}", *COMMON, *extra]


def run_dir_of(outdir: Path, run: dict) -> Path | None:
    root = outdir / run["name"]
    dirs = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    return dirs[-1] if dirs else None


def final_snapshot(run_dir: Path | None) -> Path | None:
    snaps = sorted(run_dir.glob("network-snapshot-*.pkl")) if run_dir else []
    return snaps[-1] if snaps and snaps[-1].name == f"network-snapshot-{KIMG:06d}.pkl" else None


def do_run(run: dict, outdir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if final_snapshot(run_dir_of(outdir, run)) is None:
        print(" ".join(["python", *train_args(run, outdir)]), flush=True)
        subprocess.run([sys.executable, *train_args(run, outdir)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    snap = final_snapshot(run_dir_of(outdir, run))
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
        if rd is None or final_snapshot(rd) is None:
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


def sheet_path(docs: Path, res: int, seed: int) -> Path:
    return docs / (f"contact-{res}px.png" if seed == 0 else f"contact-{res}px-s{seed}.png")


def contact_sheets(outdir: Path, rows: list[dict], docs: Path, recorded: list[dict]) -> list[Path]:
    """One PNG per data resolution and seed: the first row of reals.png, then each run's last G_ema grid (its first
    row: 4 renders of fixed latents and poses), one labelled row each. Where summary.json records runs of the same
    sheet that are not in `outdir` (trained elsewhere), the new rows are appended to the sheet already written."""
    import PIL.Image
    import PIL.ImageDraw
    out = []
    for res, seed in sorted({(r["res"], r["seed"]) for r in rows}, key=lambda k: (-k[0], k[1])):
        runs = [r for r in rows if (r["res"], r["seed"]) == (res, seed)]
        path = sheet_path(docs, res, seed)
        here = {r["name"] for r in runs}
        elsewhere = [r for r in recorded if (r["res"], r["seed"]) == (res, seed) and r["name"] not in here]
        keep = PIL.Image.open(path).convert("RGB") if elsewhere and path.is_file() else None
        tiles = [] if keep is None else [keep]
        for r in ([] if keep is not None else [dict(runs[0], label="reals", reals=True)]) + runs:
            png = "reals.png" if r.get("reals") else f"fakes{KIMG:06d}.png"
            grid = PIL.Image.open(run_dir_of(outdir, r) / png).convert("RGB")
            row = grid.crop((0, 0, grid.width, res))                      # the first grid row: 4 renders
            label = PIL.Image.new("RGB", (150, res), "white")
            PIL.ImageDraw.Draw(label).text((4, res // 2 - 6), r.get("label", r["name"]), fill="black")
            tile = PIL.Image.new("RGB", (150 + row.width, res), "white")
            tile.paste(label, (0, 0))
            tile.paste(row, (150, 0))
            tiles.append(tile)
        sheet = PIL.Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), "white")
        y = 0
        for t in tiles:
            sheet.paste(t, (0, y))
            y += t.height
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
