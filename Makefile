# nerepro. `make test` on a fresh clone creates .venv, installs everything and runs the tests.
#   make quick      a small real F1 sweep on Fashion-MNIST, then every table, figure and claim (2 CPU cores: ~12 min);
#                   QUICK=results/quick-new trains afresh beside the committed results/quick
#   make reproduce  the whole paper (configs/paper.toml) on this machine's GPUs; run again to resume
#   make report     rebuild runs.csv, tables, figures, claims and protocol of RESULTS (default results/quick)
#   make test-min   the tests against the oldest torch/torchvision nerepro supports (pyproject.toml), in .venv-min
#   make import-gpu ARCHIVE=OUT/results.tar.gz   merge a GPU session's records into results/f1 (INTO=...), rebuild its report
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NEREPRO := $(VENV)/bin/nerepro
STAMP := $(VENV)/.installed
RESULTS ?= results/quick
QUICK ?= results/quick
MIN_TORCH ?= torch==2.11.0 torchvision==0.26.0

.PHONY: install test test-min quick reproduce report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-min:
	test -x .venv-min/bin/python || $(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet $(MIN_TORCH) -e '.[test]'
	.venv-min/bin/python -m pytest -q

quick: install
	$(NEREPRO) data download fashion-mnist
	$(NEREPRO) sweep configs/quick.toml --results $(QUICK)
	$(MAKE) report RESULTS=$(QUICK)

reproduce: install
	$(NEREPRO) data download
	$(NEREPRO) sweep configs/paper.toml --results results/paper
	$(MAKE) report RESULTS=results/paper

report: install
	$(NEREPRO) report --results $(RESULTS) --out $(RESULTS)

.PHONY: f1-cpu
f1-cpu: install
	scripts/f1_cpu.sh

.PHONY: import-gpu
import-gpu: install
	$(PY) scripts/import_gpu.py "$(ARCHIVE)" $(if $(INTO),--into $(INTO))
