"""notebooks/hypernerfgan_t4.ipynb is committed without outputs and runs end to end, headless, with a CPU-sized
parameter set (nbclient): install check, training with live output, the grid, the interpolation video, FID-1k."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "hypernerfgan_t4.ipynb"


def _load():
    nbformat = pytest.importorskip("nbformat")
    return nbformat, nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stripped_and_parameters_come_first():
    nbformat, nb = _load()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip the notebook's outputs"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
    for name in ("FAMILY", "KIMG", "PRESET"):
        assert f"\n{name} = " in "\n" + code[0].source


@pytest.mark.slow
def test_notebook_runs_headless_on_cpu(tmp_path, monkeypatch, standin_detector):
    nbformat, nb = _load()
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HNG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # A kernel of this interpreter (a kernelspec's plain "python" could be another one on PATH).
    spec = tmp_path / "jupyter" / "kernels" / "hng-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hng-test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    cpu = {"EXTRA_PRESETS": ["smoke"], "KIMG": 0.1, "OUTDIR": str(tmp_path / "runs"), "REPO_DIR": str(REPO),
           "INSTALL": False, "INTERP_SEEDS": "0-2", "INTERP_FRAMES": 4, "DETECTOR": standin_detector}
    params = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in cpu.items()))
    first = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(first + 1, params)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="hng-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs for k in o.get("data", {})}
    assert "tick " in text and "last snapshot: network-snapshot-" in text      # live training output
    assert "fid1k_full" in text                                                 # the metric's result line
    assert {"image/png", "text/html"} <= kinds                                  # the grid and the embedded video
    run_dir = next((tmp_path / "runs").glob("00000-*"))
    assert (run_dir / "interp.mp4").is_file() and (run_dir / "metric-fid1k_full.jsonl").is_file()
