# make demo  — train a small UMX on a generated MUSDB-format dataset, separate, score (offline)
# make test  — the test suite
# make bench — speed and memory of separation on this machine
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: venv test demo bench check-ffmpeg clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-mpi.txt
	@py=$$(scripts/find-python310.sh) || exit 1; \
	if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@# mpi4py builds against the system's MPI: only where Open MPI (mpicc) is installed
	@if command -v mpicc >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --disable-pip-version-check -r requirements-mpi.txt || exit 1; \
	else echo "note: no MPI found: multi-process training and its tests need 'apt-get install -y openmpi-bin libopenmpi-dev'"; fi
	@rm -f $(VENV)/.installed-*; touch $@

check-ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { echo "ffmpeg is missing: run 'apt-get update && apt-get install -y ffmpeg' (needed for STEMS and compressed audio)"; exit 1; }

test: venv check-ffmpeg
	$(PY) -m pytest -q tests

demo: venv check-ffmpeg
	$(PY) demo.py

bench: venv check-ffmpeg
	$(PY) benchmark.py --seconds 60 180 600 --plot bench.png \
		$(if $(OPENUNMIX_PYTHON),--vs-openunmix $(OPENUNMIX_PYTHON))

clean:
	rm -rf $(VENV) demo_out .pytest_cache
