# make setup          install what is missing (system packages when root), the venv
# make demo           train a small UMX on a generated MUSDB-format dataset, separate, score
# make test           the test suite
# make stress         the separation paths that once aborted, 30 runs each beside CPU hogs
# make bench          speed and memory of separation on this machine
# make gpu-check      on a machine with a GPU: installs the GPU libraries, checks and measures
# make gpu-env-check  without a GPU: proves the GPU environment loads (a venv apart, ~4 GB)
# make clean          remove the venvs and the demo's outputs
# Each first runs scripts/setup.sh: missing system packages (ffmpeg, Open MPI; apt-get when
# root, else the exact command), the Python 3.10 venv with the pinned packages, mpi4py;
# with GPU=1 also requirements-gpu.txt (NNabla's CUDA extension and NVIDIA's libraries).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help setup venv test stress demo bench gpu-check gpu-env-check clean

help:  # the targets, from the lines above (bare `make` prints this)
	@sed -n 's/^# make /make /p' $(MAKEFILE_LIST)

setup:
	@GPU=$(GPU) scripts/setup.sh $(VENV)

venv: setup

test: setup
	$(PY) -m pytest -q tests

stress: setup
	$(PY) tools/stress.py --runs 30

demo: setup
	$(PY) tools/demo.py

bench: setup
	$(PY) tools/benchmark.py --seconds 60 180 600 --xumx --plot docs/bench.png \
		$(if $(OPENUNMIX_PYTHON),--vs-openunmix $(OPENUNMIX_PYTHON))

gpu-check:
	@GPU=1 scripts/setup.sh $(VENV)
	$(PY) tools/gpu_check.py

gpu-env-check:
	@GPU=1 scripts/setup.sh .venv-gpu-check
	.venv-gpu-check/bin/python tools/gpu_env_check.py

clean:
	rm -rf $(VENV) .venv-gpu-check demo_out .pytest_cache
