#!/usr/bin/env bash
# The GPU check, from the repository root on a machine with CUDA (meant to take < 8 minutes):
#   1. tests/integration/test_cuda.py: training, scan and null, causal check, attribution and a
#      whole study on CUDA against the CPU (float32) and in bfloat16;
#   2. the scan and training-step benchmarks with --device cuda, float32 and bfloat16, and the
#      bfloat16-against-float32 timings (benchmarks/precision.py);
#   3. the main job on CUDA (sklens run), timed per phase;
#   4. with more than one GPU, a data-parallel scan under torchrun on NCCL, one GPU per rank,
#      against the single-process scan (tests/slow/test_distributed.py).
# Everything lands in $OUT (default gpu-check/): one log per step and results.md, the tables.
set -u
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export SKLENS_HOME=${SKLENS_HOME:-$OUT/home}
RESULTS=$OUT/results
python - <<'PY' || { echo "no CUDA device: nothing to check"; exit 2; }
import torch
assert torch.cuda.is_available()
print(torch.cuda.get_device_name(), torch.version.cuda, torch.__version__)
PY
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember a failure
    local name=$1 limit=$2; shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
    [ $rc -eq 0 ] || status=1
}
step tests 150 python -m pytest -q -p no:cacheprovider tests/integration/test_cuda.py
for dtype in float32 bfloat16; do
    step "scan-$dtype" 90 python benchmarks/scan.py --device cuda --dtype "$dtype" --repeats 3 --results "$RESULTS"
    step "train-$dtype" 90 python benchmarks/train_step.py --device cuda --dtype "$dtype" --repeats 3 --results "$RESULTS"
done
step precision 60 python benchmarks/precision.py --device cuda --repeats 3 --results "$RESULTS"
step main-job 150 sklens run --device cuda --out "$OUT/main-job" --quiet
n=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$n" -gt 1 ]; then
    SKLENS_TEST_DEVICE=cuda step torchrun 120 python -m pytest -q -p no:cacheprovider \
        tests/slow/test_distributed.py
fi
{
    echo "# GPU check: $(date -u +%Y-%m-%dT%H:%MZ), $(head -1 "$OUT/tests.log" 2>/dev/null)"
    cat "$OUT/steps.txt"
    [ -f "$OUT/main-job/summary.json" ] && python -c "import json,sys; s=json.load(open(sys.argv[1])); print('main job timings (s):', s['timings_s'], 'dtype', s['config']['dtype'])" "$OUT/main-job/summary.json"
    cat "$RESULTS"/*.md 2>/dev/null
} > "$OUT/results.md"
echo "results in $OUT/results.md"
exit $status
