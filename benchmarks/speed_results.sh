#!/usr/bin/env bash
# Every figure of docs/RESULTS.md sections 3 and 4 in one command (best on an otherwise idle machine;
# on a shared one, under `nice` at most 5, and quote the load lines it writes):
#   bash benchmarks/speed_results.sh [LOG]      (default benchmarks/results/speed-results-<date>.log)
# ~2 h on 2 idle cores: speed.py (3 runs per config, alternating blocks), then the 10-task PMNIST run.
# MNIST must be fetched once before (python benchmarks/fetch_data.py).
set -uo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
LOG=${1:-results/speed-results-$(date +%F).log}
{
  echo "# $(git rev-parse --short HEAD 2>/dev/null) start: $(uptime)"
  echo "# 3. MLPs (one thread: CPU-time ratios)"
  $PY speed.py --configs mlp-100-b10 mlp-100-b64 mlp-1000-b64 --blocks 15 --repeats 3
  echo "# 3. conv and ResNet-18, one thread, then two (wall-clock ratios)"
  $PY speed.py --configs conv-b64 resnet18-b64 --threads 1 --blocks 9 --repeats 3
  $PY speed.py --configs conv-b64 resnet18-b64 --threads 2 --blocks 9 --repeats 3
  echo "# 4. whole run, as users run it: $(uptime)"
  $PY whole_run.py
  echo "# 4. whole run, subnormals flushed in both (the baseline at its fastest): $(uptime)"
  $PY whole_run.py --flush-denormal
  echo "# end: $(uptime)"
} 2>&1 | tee "$LOG"
