"""Imports flow one way (down): no cycle among gptlab's modules, no upward import, and so no
needless rerun: editing a converter reruns no training stage, editing the fused loss reruns
neither download nor tokenize (checked with DVC itself on a scratch copy of the pipeline)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.pipeline import STAGES, imported_files, module_imports

ROOT = Path(__file__).resolve().parents[1]
GRAPH = module_imports(ROOT / "src")

# The layers, bottom up (design.md): a module may import only modules of its own layer or below.
LOW = ("gptlab.data", "gptlab.params", "gptlab.tokenizer", "gptlab.config", "gptlab.model", "gptlab.fused_loss", "gptlab.checkpoint", "gptlab.sampling")
HIGH = (
    "gptlab.convert",
    "gptlab.train",
    "gptlab.score",
    "gptlab.serve",
    "gptlab.litgpt",
    "gptlab.cli",
    "gptlab.lora",
    "gptlab.generate",
    "gptlab.inference",
    "gptlab.chat",
)


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in graph.get(v, ()):
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    # sanity: the helper reads every module, and function-level imports count
    assert {"gptlab.checkpoint", "gptlab.convert.load_any", "gptlab.cli"} <= set(GRAPH)
    assert "gptlab.serve" in GRAPH["gptlab.cli"]  # imported inside _serve only
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"c"}}) == [["a", "b"], ["c"]]


def test_no_import_cycle_among_gptlab_modules():
    assert _cycles(GRAPH) == []


def test_gptlab_init_is_trivial():
    assert GRAPH["gptlab"] == set()


@pytest.mark.parametrize(
    ("lower", "forbidden"),
    [
        (LOW, HIGH),
        (("gptlab.io", "gptlab.errors", "gptlab.device"), ("gptlab.data",) + LOW[1:] + HIGH),
        (("gptlab.params",), ("gptlab.model", "gptlab.fused_loss", "gptlab.checkpoint", "gptlab.data") + HIGH),
        (
            ("gptlab.inference",),
            ("gptlab.convert", "gptlab.lora", "gptlab.generate", "gptlab.train", "gptlab.score", "gptlab.serve", "gptlab.litgpt", "gptlab.cli"),
        ),
        (("gptlab.generate",), ("gptlab.train", "gptlab.score", "gptlab.serve", "gptlab.litgpt", "gptlab.cli")),
        (("gptlab.convert",), ("gptlab.litgpt", "gptlab.lora", "gptlab.train", "gptlab.score", "gptlab.serve", "gptlab.generate", "gptlab.cli")),
        (("gptlab.lora",), ("gptlab.convert.peft", "gptlab.train", "gptlab.generate", "gptlab.score", "gptlab.serve", "gptlab.litgpt", "gptlab.cli")),
        (("gptlab.data", "gptlab.score", "gptlab.serve"), ("gptlab.train",)),
    ],
)
def test_imports_point_down(lower, forbidden):
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if _under(m, lower) for t in targets if _under(t, forbidden))
    assert upward == []


def test_checkpoint_reads_only_the_gptlab_format():
    assert not any(_under(t, ("gptlab.convert",)) for t in GRAPH["gptlab.checkpoint"])


def _deps(stage: str) -> set[str]:
    return {p.as_posix() for p in imported_files(ROOT / "stages" / f"{stage}.py", ROOT / "src")}


def test_stage_import_closures_hold_only_what_they_run():
    assert not [f for f in _deps("pretrain") if "/convert/" in f]
    for stage in ("download", "tokenize", "instructions"):
        deps = {Path(f).name for f in _deps(stage)}
        assert not deps & {"model.py", "fused_loss.py"}, stage


# --- the rerun claims, with DVC on a scratch copy ----------------------------------------------


def _dvc(cwd: Path, *args: str) -> str:
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1", DVC_NO_UPDATE_CHECK="1")
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"dvc {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r.stdout


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _placeholders(project: Path, stages: dict) -> None:
    """Create every data dep and out of every stage (a JSON file or a folder holding one file)."""
    wanted = set()
    for stage in stages.values():
        for key in ("deps", "outs", "metrics", "plots"):
            wanted |= {p for p in _paths(stage.get(key)) if p.startswith(("data/", "models/", "metrics/"))}
    for rel in sorted(wanted, key=lambda p: (p.count("/"), p), reverse=True):  # deepest first
        path = project / rel
        if path.exists():
            continue
        if path.suffix == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n")
        else:
            path.mkdir(parents=True)
            (path / "placeholder").write_text(rel)


def _changed(project: Path) -> set[str]:
    status = json.loads(_dvc(project, "status", "--json") or "{}")
    return set(status)


def _append(path: Path, text: str) -> str:
    before = path.read_text()
    path.write_text(before + text)
    return before


@pytest.mark.slow
def test_editing_a_converter_or_the_fused_loss_reruns_only_the_stages_that_import_it(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, project / name)
    (project / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    _placeholders(project, stages)
    _dvc(project, "commit", "-f", "-q")
    assert _changed(project) == set()

    def importers(path: Path) -> set[str]:
        return {s for s in STAGES if path in imported_files(project / "stages" / f"{s}.py", project / "src")}

    for rel, never in (("convert/openai_tf.py", {"download", "tokenize", "pretrain", "instructions"}), ("fused_loss.py", {"download", "tokenize"})):
        path = project / "src" / "gptlab" / rel
        before = _append(path, "\n# edited\n")
        changed = _changed(project)
        assert changed == importers(path), rel
        assert changed and not changed & never, rel
        path.write_text(before)  # the same bytes: the lock holds again
