# The README's two commands: `make study` (set up + the default study) and `make test`.
# Every target uses the checkout's own virtual environment, .venv/ (made by `make setup`), so two
# clones never run each other's code; `make PYTHON=python3 ...` uses an environment of your own.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
CORES ?= $(shell nproc)
# The chosen environment's commands (snakemake, dvc, snakefmt) come first on the PATH of every recipe.
BIN := $(if $(findstring /,$(PYTHON)),$(abspath $(dir $(PYTHON))))
export PATH := $(if $(BIN),$(BIN):)$(PATH)

.PHONY: setup study test test-fast lint schema docs dvc.yaml status verify publish fetch-results figures bench clean \
	study-cause study-cifar10 study-full study-released study-paper study-variance study-dynamics study-poison-rate \
	setup-slurm test-slurm

setup:  ## install system + Python dependencies into .venv (idempotent)
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "installing the Debian package dataset-fashion-mnist (Fashion-MNIST's original files)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi
	@if [ "$(PYTHON)" = "$(VENV)/bin/python" ] && [ ! -x "$(PYTHON)" ]; then \
	  echo "creating the virtual environment $(VENV)"; python3 -m venv $(VENV); \
	fi
	$(PYTHON) -m pip install -q -r envs/requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

study: setup  ## the whole default study: results/metrics.csv, results/table.md, results/figures/
	time CORES=$(CORES) workflow/scripts/run_all.sh
	@cat results/table.md

test: setup lint  ## lint, then the test suite (unit tests + end-to-end DAG runs under Snakemake and DVC)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-fast:  ## unit tests only
	$(PYTHON) -m pytest -q -m "not e2e" -p no:cacheprovider tests

lint:  ## snakefmt and snakemake --lint on the workflow
	snakefmt --check .
	snakemake --lint

schema:  ## regenerate the JSON Schema of params.yaml and the configuration reference page from src/backdoor/schema/
	PYTHONPATH=src $(PYTHON) -m backdoor.schema.export

docs:  ## build the documentation site into site/ (mkdocs build --strict: a broken link or missing page fails)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

dvc.yaml:  ## regenerate dvc.yaml from the Snakemake DAG (after editing study: in params.yaml)
	$(PYTHON) workflow/scripts/snake2dvc.py -o dvc.yaml

status:  ## what DVC would rerun, one line per stage template
	@$(PYTHON) workflow/scripts/dvc_status.py

verify:  ## re-hash every output and its cache object against dvc.lock
	$(PYTHON) workflow/scripts/verify_outputs.py --cache

publish:  ## producer: verify, commit dvc.lock, dvc push (REMOTE=s3://bucket/prefix or a path; ENDPOINT=url for non-AWS S3)
	PYTHON=$(PYTHON) workflow/scripts/publish.sh "$(REMOTE)" "$(ENDPOINT)"

fetch-results:  ## consumer, in a fresh clone: dvc pull, verify every byte against dvc.lock, reconcile Snakemake
	PYTHON=$(PYTHON) workflow/scripts/fetch_results.sh

figures:  ## redraw the tables and figures from the published metrics alone (pulls them if missing; trains nothing)
	workflow/scripts/figures.sh

bench:  ## every defense of params.yaml on the badnets model, as a table
	$(PYTHON) benchmarks/purify.py --attack badnets --defenses $$($(PYTHON) -c "import yaml; print(','.join(yaml.safe_load(open('params.yaml'))['study']['defenses']))")

clean:  ## remove pipeline outputs and logs (not the DVC cache, not .venv)
	rm -rf data results logs .snakemake

study-cause: setup  ## why the default resists purification (profiles/cause.yaml), then its tables
	snakemake --cores $(CORES) all --configfile profiles/cause.yaml  # Snakemake only: dvc.yaml follows params.yaml
	$(PYTHON) benchmarks/cause.py

study-cifar10: setup  ## the seed papers' setting on CPU: CIFAR-10 × PreAct-ResNet18, 500 clean images
	snakemake --cores $(CORES) all --configfile profiles/cifar10.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-variance: setup  ## where a cell's spread comes from: badnets × 3 training seeds × 3 defense seeds (profiles/variance.yaml)
	snakemake --cores $(CORES) all --configfile profiles/variance.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-dynamics: setup  ## checkpoints along training and purification: FIP's Fig. 1 and 3 on badnets and blend (profiles/dynamics.yaml)
	snakemake --cores $(CORES) all --configfile profiles/dynamics.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-poison-rate: setup  ## poisoning rates 0–20% on badnets, blend and sig, FT, FST and the seed methods, P-ASR (profiles/poison_rate.yaml)
	snakemake --cores $(CORES) all --configfile profiles/poison_rate.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-released: setup  ## the seed methods next to their released twins on badnets and blend (profiles/released.yaml)
	snakemake --cores $(CORES) all --configfile profiles/released.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-paper: setup  ## the seed papers' setting on one GPU: CIFAR-10 × PreAct-ResNet18 w64, 3 × 3 seeds (profiles/paper.yaml)
	snakemake --cores $(CORES) --resources gpu=1 all --configfile profiles/paper.yaml  # Snakemake only: dvc.yaml follows params.yaml

study-full: setup  ## every attack × defense × 3 training seeds × 3 defense seeds × both models (days on 2 cores)
	snakemake --cores $(CORES) all --configfile profiles/full.yaml  # Snakemake only: dvc.yaml follows params.yaml

setup-slurm: setup  ## the pinned SLURM executor plugin (profiles/slurm), into the same environment
	$(PYTHON) -m pip install -q -r envs/slurm.txt

test-slurm: setup-slurm  ## the opt-in SLURM test: a one-node cluster on 127.0.0.1 runs the tiny study (root; minutes)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m slurm -s tests/test_slurm.py
