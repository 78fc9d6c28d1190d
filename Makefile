# stronglens — the two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
RUN ?= runs/demo
NBDEV_TEST_ARGS ?= --flags slow --n_workers 2 --timing
# pytest on 2 workers (pytest-xdist): one group per test file, the demo run's tests together (tests/conftest.py)
PYTEST_WORKERS ?= 2
# Notebooks that check against the real Legacy Surveys files in ../shared/data (present beside the checkout in CI);
# on a machine without them those notebooks are skipped with a message (pytest skips its real-data tests itself).
REALDATA_NBS := 03b_physics|04_lensing|05_mocksky|06_legacysurvey|06b_cutoutsource|07_negatives|17b_spark_cutouts
NB_SKIP := $(if $(wildcard ../shared/data),,--skip_file_re '^([_.]|$(REALDATA_NBS))')

.PHONY: install demo test test-fast sync docs bench clean lint outputs

# Idempotent install: re-runs only when settings.ini or setup.py change.
# torch is installed first and pinned (a looser torch requirement would pull a CUDA build).
$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# lenscat's packaged catalog only: its declared deps (ligo.skymap, lalsuite, ...) are not needed to read the CSV
	$(BIN)/python -m pip install -q --no-deps lenscat==1.1.3
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	@touch $(STAMP)

install: $(STAMP)

## make demo: install, then run the whole pipeline on the embedded mock DR10 sky into $(RUN)
demo: install
	$(BIN)/stronglens demo $(RUN)

## make test: install, check notebooks and library are in sync, run notebook tests and pytest
test: install sync
	@[ -d ../shared/data ] || echo "NOTE: ../shared/data not found: skipping the real-data notebooks ($(REALDATA_NBS))"
	@df -h . "$${TMPDIR:-/tmp}" | awk 'NR==1 || !seen[$$0]++' || true
	@scratch="$$(mktemp -d "$${TMPDIR:-/tmp}/stronglens-test.XXXXXX")"; trap 'rm -rf "$$scratch"' EXIT; \
	echo "temporary files of this test run: $$scratch (removed when it ends)"; \
	export TMPDIR="$$scratch"; \
	$(BIN)/nbdev_test $(NBDEV_TEST_ARGS) $(NB_SKIP) && \
	$(BIN)/python -m pytest -q --durations=15 -n $(PYTEST_WORKERS) --dist loadgroup tests

## quicker local loop: skip cells and tests flagged slow
test-fast: install
	$(BIN)/nbdev_export
	$(BIN)/nbdev_test --n_workers 2 $(NB_SKIP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# nbdev's own CI check: the tree must not change under nbdev_export / nbdev_clean.
# Locally it just exports and cleans; with CI=true a change is an error.
sync: install
	@before="$$(git status --porcelain -- stronglens nbs 2>/dev/null)"; \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean; \
	after="$$(git status --porcelain -- stronglens nbs 2>/dev/null)"; \
	if [ -n "$$CI" ] && [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export/nbdev_clean changed the tree: notebooks and library are out of sync"; \
	  git status --short -- stronglens nbs; git diff --stat; exit 1; fi

## make docs: the documentation site (nbdev_docs with quarto when present, else from nbdev_proc_nbs)
docs: install
	$(BIN)/python tools/build_docs.py

## make outputs [NB="nbs/04_lensing.ipynb ..."]: execute module notebooks in place so their outputs are committed
outputs: install
	$(BIN)/python tools/exec_nb.py $(or $(NB),$(wildcard nbs/[0-9]*.ipynb) nbs/index.ipynb)

## make bench: every benchmark in bench/, printing ratios measured in the same run
bench: install
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _docs _proc runs .pytest_cache
