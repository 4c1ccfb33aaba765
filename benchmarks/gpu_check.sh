#!/usr/bin/env bash
# The prepared GPU check (issue: speed and scale-out): one script, <= 8 minutes on one H100/H200,
# JSON lines on stdout. Run it through the device tool from the repository root:
#   bash benchmarks/prepare_gpu_carry.sh            # here, once: wheels and MNIST into .gpucarry/
#   run: bash benchmarks/gpu_check.sh   (carry: [".gpucarry"], timeout_s: 540)
# Without CUDA it runs the same steps on the CPU with tiny settings (a smoke test of the script).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/wsn-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .gpucarry/wheels ] && ls .gpucarry/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/wsn-site .gpucarry/wheels/*.whl 2>/dev/null || true
  export PYTHONPATH=/tmp/wsn-site:$PWD
else
  export PYTHONPATH=$PWD
fi
$PY setup.py -q build_ext --inplace >/dev/null 2>&1 || echo '{"kind": "gpu_check", "step": "kernels", "built": false}'
DATA=${WSN_GPU_DATA:-$PWD/.gpucarry}
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
DEV=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)
step() { echo "{\"kind\": \"gpu_check\", \"step\": \"$1\", \"seconds\": $2, \"exit\": $3}"; }
$PY - <<'PYEOF'
import json, torch
info = {"kind": "gpu_check", "step": "machine", "torch": torch.__version__, "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
print(json.dumps(info))
PYEOF

# 1. the CUDA-marked tests (sync-free step, graph capture, CUDA checkpoint proven on the CPU)
t0=$SECONDS; $PY -m pytest -q -p no:cacheprovider -m cuda tests/engine/test_cuda.py tests/engine/test_selection.py > "$OUT/cuda-tests.log" 2>&1; rc=$?
tail -1 "$OUT/cuda-tests.log" | sed 's/^/# /'; step cuda-tests $((SECONDS - t0)) $rc

# 2. WSN / dense per step for every config, each with and without CUDA graphs (absolute times on the GPU);
#    without CUDA: the smoke run, with the device path (static selection) on the CPU beside the fused one
if [ "$DEV" = cuda ]; then SPEED="--blocks 7"; else SPEED="--quick --configs mlp-100-b10 --variants dense wsn static paper"; fi
t0=$SECONDS; $PY benchmarks/speed.py --device "$DEV" $SPEED | grep '^{'; step speed $((SECONDS - t0)) $?

# 3. the full 10-task PMNIST, paper protocol, on the device, with its wall time; then a CPU eval of it
if [ "$DEV" = cuda ]; then PM="--tasks 10 --epochs 5"; else PM="--tasks 2 --epochs 1"; fi
if [ -d "$DATA/mnist" ]; then
  t0=$SECONDS
  $PY benchmarks/pmnist.py --device "$DEV" --capacity 0.3 --seeds 0 $PM --data-root "$DATA" --keep "$OUT" | grep '^{'
  step pmnist $((SECONDS - t0)) $?
  ck=$(ls "$OUT"/pmnist-c0.3-s0.pt 2>/dev/null)
  t0=$SECONDS; $PY -m wsncli eval --ckpt "$ck" --device cpu --data-root "$DATA" --json -q > "$OUT/eval-cpu.json"; rc=$?
  $PY -c "import json,sys; d=json.load(open('$OUT/eval-cpu.json')); print(json.dumps({'kind':'gpu_check','step':'cpu-eval-of-device-checkpoint','forget_free':d['forget_free'],'outputs_match':d['outputs_match'],'acc':d['acc'],'differing':[t['differing_outputs'] for t in d['tasks']]}))"
  step cpu-eval $((SECONDS - t0)) $rc
else
  echo '{"kind": "gpu_check", "step": "pmnist", "skipped": "no MNIST in .gpucarry/mnist (run benchmarks/prepare_gpu_carry.sh)"}'
fi

# 4. one-GPU torchrun (nccl on CUDA, gloo on the CPU) on split-digits, then eval
rm -f "$OUT/ddp.pt"
t0=$SECONDS
$PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29533 -m wsncli train-task --task 1 \
    --ckpt "$OUT/ddp.pt" --epochs 2 --device "$DEV" -q > "$OUT/ddp.log" 2>&1; rc=$?
step torchrun-1 $((SECONDS - t0)) $rc
$PY -m wsncli eval --ckpt "$OUT/ddp.pt" --json -q | $PY -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'kind':'gpu_check','step':'torchrun-eval','forget_free':d['forget_free']}))"
