"""Each params field is documented once (an attribute docstring in gptlab.params) and
``--help`` of a stage prints every field it reads with that doc, its default and its value."""

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

from gptlab.params import ConvertParams, FinetuneParams, Params
from gptlab.params.docs import field_docs, params_help
from gptlab.params.training import CONVERT_SOURCES

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["gptlab.params", "gptlab.params.data", "gptlab.params.evaluation", "gptlab.params.litgpt", "gptlab.params.training"]


def params_dataclasses() -> list[type]:
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, dataclasses.is_dataclass):
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                found[obj.__qualname__] = obj
    return list(found.values())


def test_every_params_field_has_a_doc():
    classes = params_dataclasses()
    assert Params in classes and FinetuneParams in classes and len(classes) >= 15
    missing = [f"{cls.__module__}.{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name, "").strip()]
    assert not missing, f"params fields without a docstring (write one right after the field): {missing}"


def test_convert_source_doc_names_every_source():
    doc = field_docs(ConvertParams)["source"]
    assert all(source in doc for source in CONVERT_SOURCES) and "hf:" in doc


def run_help(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, "-m", "stages.finetune", "--help", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_stage_help_shows_each_fields_doc_default_and_current_value():
    out = run_help()
    flat = " ".join(out.split())
    doc = field_docs(FinetuneParams)["mask_prompt"]
    assert "finetune.mask_prompt = true (default: false)" in flat  # params.yaml sets true; the dataclass default is false
    assert doc in flat
    assert "finetune.lora.r = 8 (default: 16)" in flat and field_docs(FinetuneParams)["max_steps"] in flat
    assert "seed = 1337" in flat and "generate." not in flat  # only the sections dvc.yaml gives the stage
    assert "finetune.mask_prompt = false (default: false)" in " ".join(run_help("-S", "finetune.mask_prompt=false").split())


def test_help_of_an_unreadable_params_file_shows_the_defaults():
    text = params_help(Params, ["finetune.batch_size"], None, "nope.yaml not loaded")
    assert "finetune.batch_size  (default: 8)" in text and field_docs(FinetuneParams)["batch_size"] in " ".join(text.split())
