#!/usr/bin/env bash
# One GPU lease (the `device` tool: one 10-minute command at a time, about 30 minutes in all, offline) in a few
# stages. `prepare` runs here; the others run there, from the copied tree's root, each as one device command.
#
#   bash benchmarks/gpu_session.sh prepare
#       here: the device wheels (.device-wheels/) and the small scene variants (.data/fox, .data/bonsai,
#       .data/test_garden.npz), all git-ignored; prints what to carry for each stage
#   ARGP_NS_COMMIT=<sha> bash benchmarks/gpu_session.sh build
#       there: builds gsplat and our two extensions at once and leaves them in $OUT/gsplat_ext.tgz and
#       $OUT/argp_ext.tgz (copy both into .device-wheels/ here: later commands load them in a second), then the
#       GPU tests (not slow) into $OUT/gpu-tests.log and the step timing into $OUT/step-time.json
#   ARGP_NS_COMMIT=<sha> bash benchmarks/gpu_session.sh bench RESULTS_DIR <benchmarks.run arguments>
#       there: the harness with --out $OUT, starting from RESULTS_DIR's file of the scene (so a --budgets fraction
#       finds stock's mean count, and the file that comes back holds the old runs and the new); copy $OUT's
#       <scene>-<protocol>.* back into RESULTS_DIR here. --time-budget is $TIME_BUDGET (530 s) unless given; with
#       --parallel K > 1 the runs share the GPU through MPS where the machine has it
#
# Carry: build  .device-wheels .data/fox .data/test_garden.npz   (about 52 MB)
#        bench  .device-wheels .data/<scene>                      (fox about 56 MB, bonsai about 61 MB, with both builds)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  prepare)
    [ -f .device-wheels/setup-gpu.sh ] || bash ../shared/device/get-wheels.sh
    mkdir -p .data/fox
    cp ../shared/data/fox/transforms.json .data/fox/
    cp -r ../shared/data/fox/images ../shared/data/fox/images_2 .data/fox/  # step_time's two downscales
    [ -d .data/bonsai ] || cp -r ../shared/data/bonsai .data/bonsai
    cp ../shared/data/gsplat_test_garden/test_garden.npz .data/
    du -sh .device-wheels .data/* | sed 's/^/gpu_session: /'
    ;;
  build)
    : "${ARGP_NS_COMMIT:?gpu_session: set ARGP_NS_COMMIT to the commit of the copied tree}"
    source benchmarks/device_setup.sh
    python3 -c "from gsplat.cuda._backend import _C" &
    python3 -c "from argp_ns import cuda; from argp_ns.cuda import loss; print('argp_ns kernels:', cuda.unavailable_reason() or 'score ok', '/', loss.unavailable_reason() or 'loss ok')"
    wait
    tar czf "$OUT/gsplat_ext.tgz" -C "$TORCH_EXTENSIONS_DIR" gsplat_cuda
    tar czf "$OUT/argp_ext.tgz" -C "$TORCH_EXTENSIONS_DIR" argp_ns_score argp_ns_loss
    ARGP_GARDEN_NPZ=.data/test_garden.npz ARGP_FOX_DATA=.data/fox timeout 180 \
      python3 -m pytest -q -m "gpu and not slow" tests -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -3 || true
    timeout 240 python3 -m benchmarks.step_time --data .data/fox --downscales 2,1 --trials 3 --out "$OUT/step-time.json"
    ;;
  bench)
    : "${ARGP_NS_COMMIT:?gpu_session: set ARGP_NS_COMMIT to the commit of the copied tree}"
    dir=${2:?gpu_session: bench RESULTS_DIR <benchmarks.run arguments>}
    shift 2
    scene="" protocol=quick parallel=1 prev=""
    for a in "$@"; do
      case "$prev" in --scene) scene=$a ;; --protocol) protocol=$a ;; --parallel) parallel=$a ;; esac
      prev=$a
    done
    [ -n "$scene" ] || { echo "gpu_session: bench needs --scene" >&2; exit 2; }
    source benchmarks/device_setup.sh
    # parallel (untimed) runs under MPS: their kernels share the GPU instead of taking turns (nine fox quick runs at
    # once: 361 s on an H200; alone they take 160 + 80 + 80 s per repeat, about 960 s)
    if [ "$parallel" -gt 1 ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
      trap 'echo quit | nvidia-cuda-mps-control' EXIT
      echo "gpu_session: MPS on for $parallel runs at once"
    fi
    if [ -f "$dir/$scene-$protocol.json" ]; then cp "$dir/$scene-$protocol.json" "$OUT/"; fi
    python3 -m benchmarks.run --time-budget "${TIME_BUDGET:-530}" "$@" --out "$OUT"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh prepare | build | bench RESULTS_DIR <benchmarks.run arguments>" >&2
    exit 2
    ;;
esac
