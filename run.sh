#!/usr/bin/env bash
# argp_ns in one command, on a fresh Linux machine with Python 3.10, 3.11 or 3.12 (GPU optional):
#   ./run.sh          set everything up (.venv, torch, nerfstudio 1.1.5, gsplat 1.4.0, this plugin) and run
#                     the main job: splatfacto-argp on the embedded demo scene, ns-eval, ns-export, a summary
#   ./run.sh test     set up the same way and run the tests (GPU tests are skipped without CUDA)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

need_libusb() {
  # open3d, which nerfstudio's PLY loader and exporter import, links against libusb-1.0
  ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; }
  else
    echo "argp_ns: the system library libusb-1.0 is missing (open3d needs it): sudo apt-get install libusb-1.0-0" >&2
    exit 1
  fi
}

setup() {
  need_libusb
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # shellcheck disable=SC1091
  source .venv/bin/activate
  if ! python -c "import argp_ns, nerfstudio, gsplat, pytest" >/dev/null 2>&1; then
    python -m pip install -q --upgrade pip
    # TORCH_INDEX=https://download.pytorch.org/whl/cpu ./run.sh: torch's CPU-only build (far smaller than the CUDA one)
    python -m pip install -q torch torchvision ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    python -m pip install -q -e ".[test]"
  fi
}

setup
case "${1:-demo}" in
  demo) argp-ns demo "${@:2}" ;;
  test) TORCHDYNAMO_DISABLE=1 python -m pytest -q tests "${@:2}" ;;
  *) echo "usage: ./run.sh [demo|test] [args...]" >&2; exit 2 ;;
esac
