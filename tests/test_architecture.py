"""The layer rules of docs/ARCHITECTURE.md hold: every import of one of the project's modules goes to its own floor
or a lower one, and the project's modules import each other without cycles."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OWN = ("dnnlib", "torch_utils", "training", "metrics", "train", "generate", "calc_metrics", "dataset_tool")
# Module prefix -> floor (the longest matching prefix wins). Keep in step with docs/ARCHITECTURE.md.
FLOORS = {
    "dnnlib": 0,
    "torch_utils": 1,
    "training.rendering": 2,
    "training": 3, "training.networks": 3, "training.synthetic": 3, "training.augment": 3, "training.video": 3,
    "training.mesh": 3, "training.state": 3, "training.checkpoint": 3,
    "metrics": 4, "training.config": 4, "training.dataset": 4, "training.loss": 4, "training.phases": 4,
    "training.fast_step": 4,
    "training.training_loop": 5,
    "train": 6, "generate": 6, "calc_metrics": 6, "dataset_tool": 6,
}


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module}: no floor in docs/ARCHITECTURE.md / FLOORS"
    return FLOORS[best]


def modules() -> dict[str, set[str]]:
    """{module: the project's modules it imports (anywhere in the file, lazy imports included)}."""
    paths = [REPO / f"{m}.py" for m in ("train", "generate", "calc_metrics", "dataset_tool")]
    for pkg in ("dnnlib", "torch_utils", "training", "metrics"):
        paths += sorted((REPO / pkg).rglob("*.py"))
    out = {}
    for path in paths:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                found.add(base)
        out[name] = {m for m in found if m.split(".")[0] in OWN and m != name}
    return out


def test_imports_never_go_up_a_floor():
    bad = [f"{m} (floor {floor(m)}) imports {i} (floor {floor(i)})"
           for m, imps in modules().items() for i in sorted(imps) if floor(i) > floor(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = modules()
    graph = {m: {i for i in imps if i in graph} for m, imps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph[m]):
            if state.get(i) == 1 and not (m.startswith(i + ".") or i.startswith(m + ".")):   # a package's own modules
                raise AssertionError("import cycle: " + " -> ".join(path + [m, i]))
            if i not in state:
                visit(i, path + [m])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_floor_lookup():
    assert floor("training.networks.hyper") == 3 and floor("training.rendering.camera") == 2
    assert floor("training.training_loop") == 5 and floor("torch_utils.ops.fir") == 1
