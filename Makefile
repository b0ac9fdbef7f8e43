# make demo  — train a small UMX on a generated MUSDB-format dataset, separate, score (offline)
# make test  — the test suite
# make bench — speed and memory of separation on this machine
# Each first runs scripts/setup.sh: missing system packages (ffmpeg, Open MPI; apt-get when
# root, else the exact command), the Python 3.10 venv with the pinned packages, mpi4py.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup venv test demo bench gpu-check clean

setup:
	@scripts/setup.sh

venv: setup

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) demo.py

bench: setup
	$(PY) benchmark.py --seconds 60 180 600 --xumx --plot bench.png \
		$(if $(OPENUNMIX_PYTHON),--vs-openunmix $(OPENUNMIX_PYTHON))

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# on a machine with a GPU and NNabla's CUDA extension: checks and figures of the GPU paths
gpu-check: setup
	$(PY) gpu_check.py
