# SegLoop: the two commands that matter are `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
SAMPLE ?= sample_data
STUDIES ?= $(SAMPLE)/studies
SAMPLE_CASES ?= 8
SAMPLE_SEED ?= 0
SAMPLE_LABELLED ?= 4
CONF ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# MONAI Label's launcher runs `python` from PATH: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)
export MONAI_LABEL_TRACKING_ENABLED := false

.PHONY: install sample-data serve serve-pacs test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -c constraints.txt -e '.[test]'
	touch $@

# Generated once; delete the folder to regenerate.
$(SAMPLE)/studies: | install
	$(BIN)/segloop sample-data --out $(SAMPLE) --cases $(SAMPLE_CASES) --seed $(SAMPLE_SEED) --labelled $(SAMPLE_LABELLED)

sample-data: $(SAMPLE)/studies

# Server, training and scoring processes share the CPU: their OpenMP threads sleep when idle
# (segloop/cpu_sharing.py).
serve: export OMP_WAIT_POLICY ?= PASSIVE
serve: install
	@if [ "$(STUDIES)" = "$(SAMPLE)/studies" ]; then $(MAKE) --no-print-directory sample-data; fi
	@echo "SegLoop: serving $(STUDIES) at http://$(HOST):$(PORT)/"
	$(BIN)/monailabel start_server --app MONAILabelApp --studies $(STUDIES) --host $(HOST) --port $(PORT) \
		--conf models segmentation,prompt $(CONF)

# A local PACS: Orthanc + DICOMweb (installed from Debian if absent), the sample studies as DICOM
# series, and SegLoop reading and writing through DICOMweb (labels stored back as DICOM SEG).
PACS_PORT ?= 8042
PACS_SAMPLE ?= sample_data_dicom
$(PACS_SAMPLE)/dicom: | install
	$(BIN)/segloop sample-data --out $(PACS_SAMPLE) --cases $(SAMPLE_CASES) --seed $(SAMPLE_SEED) --dicom

serve-pacs: export OMP_WAIT_POLICY ?= PASSIVE
serve-pacs: install $(PACS_SAMPLE)/dicom
	@echo "SegLoop: serving the PACS http://127.0.0.1:$(PACS_PORT)/dicom-web at http://$(HOST):$(PORT)/"
	$(BIN)/segloop pacs --storage .pacs --port $(PACS_PORT) --upload $(PACS_SAMPLE)/dicom -- \
		$(BIN)/monailabel start_server --app MONAILabelApp --studies http://127.0.0.1:$(PACS_PORT)/dicom-web \
		--host $(HOST) --port $(PORT) --conf models segmentation,prompt $(CONF)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: unit and in-process tests, no servers, no training runs (under 3 minutes).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/segloop-bench bench auto

clean:
	rm -rf $(SAMPLE)/studies $(SAMPLE)/ground_truth $(PACS_SAMPLE) .pacs MONAILabelApp/logs MONAILabelApp/model .pytest_cache
