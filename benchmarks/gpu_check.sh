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
# every step runs under `timeout`, capped by what is left of $GPU_CHECK_BUDGET seconds (default 540), so one
# device call of 600 s always returns its JSON lines; exit 124 in a step's line means it ran out of time
BUDGET=${GPU_CHECK_BUDGET:-540}
capped() { local cap=$1; shift; local left=$((BUDGET - SECONDS - 5)); [ "$left" -lt "$cap" ] && cap=$left
  [ "$cap" -lt 1 ] && return 124; timeout --kill-after 5 "$cap" "$@"; }
$PY - <<'PYEOF'
import json, torch
info = {"kind": "gpu_check", "step": "machine", "torch": torch.__version__, "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    info.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))
print(json.dumps(info))
PYEOF

# 1. the CUDA-marked tests: train_task of every architecture, eager and graphed, under
#    set_sync_debug_mode("error") (the GPU twin of tests/engine/test_sync_free.py); graphed steps against
#    eager bits; a capture forced to fail restores the stream; a CUDA checkpoint proven on the CPU
t0=$SECONDS; capped 170 $PY -m pytest -q -p no:cacheprovider -m cuda tests/engine/test_cuda.py tests/engine/test_selection.py > "$OUT/cuda-tests.log" 2>&1; rc=$?
tail -1 "$OUT/cuda-tests.log" | sed 's/^/# /'; step cuda-tests $((SECONDS - t0)) $rc

# 1b. CUDA-graph capture succeeds (mlp and conv): a failed capture would only warn, so assert it here
t0=$SECONDS
capped 60 $PY - <<'PYEOF'
import json, sys, torch
import torch.nn.functional as F
if not torch.cuda.is_available():
    print(json.dumps({"kind": "gpu_check", "step": "graph-capture", "skipped": "no CUDA"})); sys.exit(0)
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.training.graphed import GraphedStep
ok = True
for arch, shape in (("mlp", (784,)), ("conv", (3, 32, 32))):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, shape, (100, 100))); model.add_task(1, 10); model.cuda()
    model.train_subnet(0.3, None); model.train()
    params = [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)] + list(model.heads["1"].parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=True)
    def eager(x, y):
        logits = model(x, 1); loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss.detach() * x.shape[0], (logits.detach().argmax(1) == y).sum()
    step = GraphedStep(model, 1, opt, eager, 16)
    for _ in range(6):
        step(torch.randn(16, *shape, device="cuda"), torch.randint(0, 10, (16,), device="cuda"))
    torch.cuda.synchronize()
    captured = step.graph is not None and step.failed is None
    ok &= captured
    print(json.dumps({"kind": "gpu_check", "step": "graph-capture", "arch": arch, "captured": captured, "failed": step.failed}))
sys.exit(0 if ok else 1)
PYEOF
step graph-capture $((SECONDS - t0)) $?

# 3. the full 10-task PMNIST, paper protocol, on the device, with its wall time; then a CPU eval of it
if [ "$DEV" = cuda ]; then PM="--tasks 10 --epochs 5"; else PM="--tasks 2 --epochs 1"; fi
if [ -d "$DATA/mnist" ]; then
  t0=$SECONDS
  capped 200 $PY benchmarks/pmnist.py --device "$DEV" --capacity 0.3 --seeds 0 $PM --data-root "$DATA" --keep "$OUT" \
    | grep --line-buffered '^{'
  step pmnist $((SECONDS - t0)) "${PIPESTATUS[0]}"
  ck=$(ls "$OUT"/pmnist-c0.3-s0.pt 2>/dev/null)
  t0=$SECONDS; capped 60 $PY -m wsncli eval --ckpt "$ck" --device cpu --data-root "$DATA" --json -q > "$OUT/eval-cpu.json"; rc=$?
  $PY -c "import json,sys; d=json.load(open('$OUT/eval-cpu.json')); print(json.dumps({'kind':'gpu_check','step':'cpu-eval-of-device-checkpoint','forget_free':d['forget_free'],'outputs_match':d['outputs_match'],'acc':d['acc'],'differing':[t['differing_outputs'] for t in d['tasks']]}))"
  step cpu-eval $((SECONDS - t0)) $rc
else
  echo '{"kind": "gpu_check", "step": "pmnist", "skipped": "no MNIST in .gpucarry/mnist (run benchmarks/prepare_gpu_carry.sh)"}'
fi

# 4. one-GPU torchrun (nccl on CUDA, gloo on the CPU) on split-digits, then eval
rm -f "$OUT/ddp.pt"
t0=$SECONDS
capped 60 $PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29533 -m wsncli train-task --task 1 \
    --ckpt "$OUT/ddp.pt" --epochs 2 --device "$DEV" -q > "$OUT/ddp.log" 2>&1; rc=$?
step torchrun-1 $((SECONDS - t0)) $rc
$PY -m wsncli eval --ckpt "$OUT/ddp.pt" --json -q | $PY -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'kind':'gpu_check','step':'torchrun-eval','forget_free':d['forget_free']}))"

# 5. BatchNorm networks under torchrun: SyncBatchNorm on one GPU (nccl); on the CPU fallback two gloo
#    processes (parallel.batchnorm). A small generated image set; then eval proves forget-free.
$PY - "$OUT/images" <<'PYEOF'
import sys, numpy as np
from pathlib import Path
folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0); pattern = rng.integers(0, 2, (3, 32, 32)).astype(bool)
def split(n):
    y = (np.arange(n) % 2).astype(np.int64); x = rng.integers(0, 120, (n, 3, 32, 32)); x[y == 1] += 100 * pattern
    return x.astype(np.uint8), y
(a, b), (c, d) = split(256), split(64)
np.savez(folder / "task1.npz", x_train=a, y_train=b, x_test=c, y_test=d)
PYEOF
NPROC=$([ "$DEV" = cuda ] && echo 1 || echo 2)
for ARCH in conv resnet18; do
  rm -f "$OUT/bn-$ARCH.pt"
  t0=$SECONDS
  capped 60 $PY -m torch.distributed.run --nproc-per-node "$NPROC" --master-addr 127.0.0.1 --master-port 29534 -m wsncli train-task \
      --task 1 --ckpt "$OUT/bn-$ARCH.pt" --benchmark npz --data-root "$OUT/images" --arch "$ARCH" --epochs 1 \
      --batch-size 32 --device "$DEV" -q > "$OUT/bn-$ARCH.log" 2>&1; rc=$?
  step "torchrun-batchnorm-$ARCH" $((SECONDS - t0)) $rc
  $PY -m wsncli eval --ckpt "$OUT/bn-$ARCH.pt" --data-root "$OUT/images" --json -q | $PY -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'kind':'gpu_check','step':'torchrun-batchnorm-eval','arch':'$ARCH','forget_free':d['forget_free']}))"
done

# 6. (last: it takes what time is left) WSN / dense per step for every config, each with and without CUDA graphs (absolute times on the GPU);
#    without CUDA: the smoke run, with the device path (static selection) on the CPU beside the fused one
if [ "$DEV" = cuda ]; then SPEED="--blocks 7"; else SPEED="--quick --configs mlp-100-b10 --variants dense wsn static paper"; fi
t0=$SECONDS; capped 600 $PY benchmarks/speed.py --device "$DEV" $SPEED | grep --line-buffered '^{'; step speed $((SECONDS - t0)) "${PIPESTATUS[0]}"
