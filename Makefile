# peerlab: `make train` (default job) and `make test` are the two set-up commands; both create .venv if needed.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
PYTEST  ?= -q

.PHONY: help install train demo test test-slow lint docs bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml: a looser spec pulls a multi-GB CUDA build on CPU machines.
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install peerlab with its dev tools

train: $(STAMP)  ## run the default job (dense d2 model, 3e13 FLOPs, embedded corpus); extra overrides: ARGS="layer=peer"
	$(PY) train.py $(ARGS)

demo: $(STAMP)  ## dense vs PEER at 1e12 FLOPs side by side on 2 cores, losses + loss-vs-FLOPs PNG (about 80 s)
	$(PY) -m peerlab.demo $(ARGS)

test: $(STAMP)  ## run the test suite (slow checks excluded)
	$(PY) -m pytest $(PYTEST) -m "not slow"

test-slow: $(STAMP)  ## the multi-process and end-to-end checks (FSDP/DDP on 2 CPU processes, SLURM: fails without slurm-wlm unless PEERLAB_SKIP_SLURM=1)
	$(PY) -m pytest $(PYTEST) -m slow

lint: $(STAMP)  ## ruff lint
	$(PY) -m ruff check src tests benchmarks experiments train.py eval.py generate.py

docs: $(STAMP)  ## rewrite the tables in docs/ that code prints (config groups, sizes, cards, the planner's grid)
	$(PY) -m peerlab.doc_tables

bench: $(STAMP)  ## layers, PyPI PEER-pytorch/PKM and training steps side by side -> benchmarks/RESULTS.md (~10 min)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.run

clean:  ## remove the virtualenv and local run outputs (not the token cache in ~/.cache/peerlab)
	rm -rf $(VENV) runs outputs multirun eval .pytest_cache
