# softmax-approx — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here, first, because a looser requirement lets pip pick a multi-GB CUDA
# build; override on a GPU machine, e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= smoke
OUT ?= outputs/reproduce/$(PROFILE)
# Datasets: empty = $SOFTMAX_APPROX_DATA, else the user's data cache (~/.cache/softmax_approx/data);
# `make reproduce` fetches what is missing there when online. DATA_DIR=DIR uses another folder.
DATA_DIR ?=
DATA_ARG = $(if $(DATA_DIR),--data-dir $(DATA_DIR))
PYTEST_ARGS ?=
# extra flags for `make reproduce`, e.g. REPRO_ARGS="--only memory --jobs 2"
REPRO_ARGS ?=
# where `make reproduce` runs: local | slurm | submitit_local (docs/scaleout.md); SLURM resources
# from the profile, overridden with e.g. SLURM_ARGS="--slurm partition=gpu --slurm time=600"
LAUNCHER ?= local
SLURM_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[harness,hf,test]'
	touch $@

setup: $(VENV)/.installed ## create .venv: torch (CPU), then the project with the harness, hf and test extras

test: setup ## run the default (fast) test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup ## run only the slow tests (resume, DDP, CLI sweeps)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup ## run every test
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: setup ## attention memory/speed/gradient benchmark (core library)
	$(PY) -m softmax_approx.bench --json $(OUT)/bench.json

# OUT given on the command line wins; otherwise outputs/gpu_check (docs/gpu.md)
GPU_CHECK_ARGS ?=
gpu-check: setup ## one-GPU check (~8 min): benchmark fp32/bf16 n=512..4096 + 200-step trainings -> OUT/gpu_check.{json,md}
	$(PY) -m softmax_approx.bench gpu_check --out $(if $(filter command line,$(origin OUT)),$(OUT),outputs/gpu_check) $(DATA_ARG) $(GPU_CHECK_ARGS)

data: setup ## download every dataset into DATA_DIR (default: the user data cache; needs network)
	$(PY) -m softmax_approx.data download all $(DATA_ARG)

reproduce: setup ## run every experiment of PROFILE into OUT, then render tables and figures
	$(PY) -m softmax_approx.reproduce run --profile $(PROFILE) --out $(OUT) $(DATA_ARG) --fetch-data --launcher $(LAUNCHER) $(SLURM_ARGS) $(REPRO_ARGS)

tables: setup ## re-render OUT/tables and OUT/figures from existing results.json files
	$(PY) -m softmax_approx.report --out $(OUT)

dist: setup ## build the sdist and the wheel into dist/ and check them with twine
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

clean: ## remove build artefacts (keeps .venv and outputs)
	rm -rf .pytest_cache build dist src/*.egg-info

.PHONY: help setup test test-slow test-all bench gpu-check data reproduce tables dist clean
