#!/usr/bin/env bash
# What a session with a GPU runs (one script, meant to finish in under 8 minutes on one GPU): installs what the
# timings need, then prints one table - the quick demo on the GPU end to end, our AutoAttack against the official
# one on a CIFAR-size ResNet-18 batch, and a GCG step against nanoGCG (benchmarks/gpu_timings.py). Nothing in the
# project depends on it; `DEVICE=cpu bash benchmarks/gpu_check.sh --quick` is its smoke run on a CPU.
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
.venv/bin/python -m pip install --quiet --no-deps nanogcg==0.2.3   # the GCG peer; it declares an old transformers
DEVICE="${DEVICE:-cuda}"
.venv/bin/python -c "import torch, sys; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 3)" || {
    echo "no CUDA device here: run with DEVICE=cpu for a smoke run" >&2; exit 2; }
ROBUSTDISTILL_THREADS="${ROBUSTDISTILL_THREADS:-4}" .venv/bin/python benchmarks/gpu_timings.py --device "$DEVICE" "$@"
