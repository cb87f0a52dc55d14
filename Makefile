# The README's two commands: `make study` (set up + the default study) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
CORES ?= $(shell nproc)

.PHONY: setup study test test-fast dvc.yaml status verify publish fetch-results figures bench clean

setup:  ## install system + Python dependencies (idempotent)
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "installing the Debian package dataset-fashion-mnist (Fashion-MNIST's original files)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi
	$(PYTHON) -m pip install -q -r envs/requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

study: setup  ## the whole default study: results/metrics.csv, results/table.md, results/figures/
	time CORES=$(CORES) workflow/scripts/run_all.sh
	@cat results/table.md

test: setup  ## the test suite (unit tests + end-to-end DAG runs under Snakemake and DVC)
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test-fast: ## unit tests only
	$(PYTHON) -m pytest -q -m "not e2e" tests

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
	dvc pull -q validate aggregate
	dvc repro --force --single-item report

bench:  ## every defense of params.yaml on the badnets model, as a table
	$(PYTHON) benchmarks/purify.py --attack badnets --defenses $$($(PYTHON) -c "import yaml; print(','.join(yaml.safe_load(open('params.yaml'))['study']['defenses']))")

clean:  ## remove pipeline outputs (not the DVC cache)
	rm -rf data results .snakemake
