#!/usr/bin/env bash
# Source on an offline GPU machine (ours: the `device` tool) from the repo root, after carrying
# .device-wheels (see ../shared/device): installs nerfstudio's wheels and this project into /tmp, and
# unpacks cached builds of gsplat (gsplat_ext.tgz) and of our kernel (argp_ext.tgz) when present.
# On a normal CUDA machine, `pip install -e .` replaces all of this.
source .device-wheels/setup-gpu.sh || return 1
rm -rf /tmp/argp
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/argp . 2>&1 | { grep -v WARN || true; }
export PYTHONPATH=/tmp/argp:$PYTHONPATH
if [ -f .device-wheels/argp_ext.tgz ]; then
  tar xzf .device-wheels/argp_ext.tgz -C "$TORCH_EXTENSIONS_DIR"
  find /tmp/argp/argp_ns/cuda -type f -exec touch -d 2000-01-01 {} +
fi
