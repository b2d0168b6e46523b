#!/usr/bin/env bash
# argp_ns in one command, on a fresh Linux machine with Python 3.10, 3.11 or 3.12 (GPU optional):
#   ./run.sh          set everything up (.venv, torch, nerfstudio 1.1.5, gsplat 1.4.0, this plugin) and run
#                     the main job: splatfacto-argp on the embedded demo scene, ns-eval, ns-export, a summary
#   ./run.sh test     set up the same way and run the fast tests (GPU tests are skipped without CUDA)
#   ./run.sh test --all   every test, the end-to-end CPU trainings too (what CI runs)
set -euo pipefail
PY=${PYTHON:-python3}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]
}

cpu_index_reachable() {
  python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$TORCH_CPU_INDEX/torch/" >/dev/null 2>&1
}

install_torch() {
  # TORCH_INDEX=<url> picks torch's index; else, without an NVIDIA GPU, torch's CPU-only build (far smaller than the
  # CUDA build the default index has for Linux) when PyTorch's CPU index answers, the default index when it does not
  if [ -n "${TORCH_INDEX:-}" ]; then
    python -m pip install -q torch torchvision --index-url "$TORCH_INDEX"
  elif ! has_nvidia_gpu && cpu_index_reachable; then
    python -m pip install -q torch torchvision --index-url "$TORCH_CPU_INDEX"
  else
    has_nvidia_gpu || echo "argp_ns: torch's CPU index ($TORCH_CPU_INDEX) cannot be reached: installing torch from the default index" >&2
    python -m pip install -q torch torchvision
  fi
  python -c "import torch, torchvision.ops; print('argp_ns: torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
}

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
    install_torch
    python -m pip install -q -e ".[test]"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced (the tests source it for its functions)
  cd "$(dirname "$0")"
  setup
  case "${1:-demo}" in
    demo) argp-ns demo "${@:2}" ;;
    test)  # the fast tests; --all: every test, the end-to-end trainings (marked slow) too, as CI runs them
      if [ "${2:-}" = --all ]; then TORCHDYNAMO_DISABLE=1 python -m pytest -q tests "${@:3}"
      else TORCHDYNAMO_DISABLE=1 python -m pytest -q -m "not slow" tests "${@:2}"; fi ;;
    *) echo "usage: ./run.sh [demo|test] [args...]" >&2; exit 2 ;;
  esac
fi
