"""The contract between dvc.yaml, stages/ and the library: one name per stage, deps that cannot drift."""

import ast
import importlib
import sys
from pathlib import Path

import pytest
import yaml

from gptlab.pipeline import STAGES, imported_files

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
DATA_ROOTS = ("data/", "models/", "metrics/")


def _paths(entries) -> list[str]:
    """dvc.yaml deps/outs/metrics entries (strings or one-key mappings) as plain paths."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _stage_constants(name: str) -> set[str]:
    """The data paths a stage file names (module-level string constants under data/, models/, metrics/)."""
    tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
    return {
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and node.value.value.startswith(DATA_ROOTS)
    }


def test_every_stage_has_one_name_everywhere():
    assert list(DVC) == list(STAGES)
    for name, stage in DVC.items():
        assert stage["cmd"] == f"python -m stages.{name}", name
        assert (ROOT / "stages" / f"{name}.py").is_file(), name
        assert f"stages/{name}.py" in _paths(stage["deps"]), name


@pytest.mark.parametrize("name", STAGES)
def test_code_deps_are_exactly_the_modules_the_stage_imports(name, monkeypatch):
    """A missing dep is a stale cache; an extra one is a needless rerun: both fail."""
    monkeypatch.chdir(ROOT)
    deps = {d for d in _paths(DVC[name]["deps"]) if d.startswith("src/")}
    imported = {f.as_posix() for f in imported_files(f"stages/{name}.py")}
    assert not imported - deps, f"dvc.yaml stage {name!r}: deps miss {', '.join(sorted(imported - deps))}; run `python -m gptlab.pipeline`"
    assert not deps - imported, f"dvc.yaml stage {name!r}: deps {', '.join(sorted(deps - imported))} are not imported; run `python -m gptlab.pipeline`"


@pytest.mark.parametrize("name", STAGES)
def test_dvc_yaml_and_the_stage_file_name_the_same_data_paths(name):
    stage = DVC[name]
    declared = {p for key in ("deps", "outs", "metrics") for p in _paths(stage.get(key)) if p.startswith(DATA_ROOTS)}
    named = _stage_constants(name)
    assert named == declared, (
        f"stage {name!r}: stages/{name}.py names {sorted(named - declared)} not in dvc.yaml; dvc.yaml has {sorted(declared - named)} the stage does not name"
    )


def test_the_import_graph_sees_lazy_imports(tmp_path):
    (tmp_path / "src" / "gptlab" / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "c.py"):
        (tmp_path / "src" / "gptlab" / f).write_text("")
    (tmp_path / "src" / "gptlab" / "a.py").write_text("def f():\n    from gptlab.sub import b\n")
    entry = tmp_path / "entry.py"
    entry.write_text("import gptlab.a\n")
    found = {p.relative_to(tmp_path).as_posix() for p in imported_files(entry, tmp_path / "src")}
    assert found == {"src/gptlab/__init__.py", "src/gptlab/a.py", "src/gptlab/sub/__init__.py", "src/gptlab/sub/b.py"}


@pytest.mark.parametrize("name", STAGES)
def test_stage_files_are_readable_and_runnable(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module(f"stages.{name}")
    assert callable(module.run) and module.__doc__.startswith(f"Stage `{name}`")
    assert len((ROOT / "stages" / f"{name}.py").read_text().splitlines()) <= 60, "a stage file fits one screen"
    sys.modules.pop(f"stages.{name}", None)
