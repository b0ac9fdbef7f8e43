#!/usr/bin/env bash
# Everything `make demo` and `make test` need, installed where it is missing:
#   1. system packages: ffmpeg/ffprobe (STEMS and compressed audio), Open MPI (mpirun, and mpicc
#      to build mpi4py) — with apt-get when run as root, else the exact command and exit 1;
#   2. a venv (argument 1, default .venv) from Python 3.10 (nnabla 1.39.0, NNabla's last
#      release, has no wheel for newer Pythons) with the pinned requirements, and with GPU=1
#      requirements-gpu.txt too (re-installed when the requirement files change);
#   3. the package (unmix_nnabla) into the venv, editable, unless the venv already imports it
#      from this checkout;
#   4. mpi4py, built against the system's Open MPI, whenever it is missing from the venv (so a
#      venv made before Open MPI was installed gains it on the next run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=$VENV/bin/python

missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing system packages (${missing[*]}): run 'sudo apt-get install -y ${missing[*]}' (ffmpeg reads STEMS and compressed audio; Open MPI runs multi-process training), then run make again" >&2
    exit 1
  fi
fi

requirements=(requirements.txt)
if [ "${GPU:-}" = 1 ]; then requirements+=(requirements-gpu.txt); fi
stamp=$VENV/.installed-$(cat "${requirements[@]}" requirements-mpi.txt | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  py=$(scripts/find-python310.sh)
  if [ ! -x "$PY" ]; then echo "creating $VENV with $py"; "$py" -m venv "$VENV"; fi
  for r in "${requirements[@]}"; do
    echo "installing $r into $VENV"
    "$PY" -m pip install -q --disable-pip-version-check -r "$r"
  done
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
# the package itself, editable: the checkout's code is what every script and test imports
here=$(pwd)
py_abs="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # asked from another folder below
if [ "$(cd / && "$py_abs" -c "import unmix_nnabla, os; print(os.path.dirname(os.path.dirname(unmix_nnabla.__file__)))" 2>/dev/null)" != "$here" ]; then
  echo "installing the package unmix_nnabla into $VENV (editable)"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps -e .
fi
if ! "$PY" -c "import mpi4py" >/dev/null 2>&1; then
  echo "installing mpi4py (built against $(command -v mpicc))"
  "$PY" -m pip install -q --disable-pip-version-check -r requirements-mpi.txt
fi
