#!/bin/sh
# The GPU figures the training lesson's speed section and `minillm bench` record, in one pass on a CUDA machine.
# Run from the repository root: `sh benchmarks/gpu.sh [part ...]`, parts: train, model, tests, ablate, flash, profile,
# modes (default: all seven, in that order). It needs only a python3 that has torch, numpy, regex, sentencepiece and tqdm (PYTHONPATH=.
# runs this checkout without installing it); it writes its JSON into $OUT (default benchmarks/), named after the GPU.
# BUDGET: seconds of training per run after the first, compiling step (default 15). Every part runs even when one
# before it fails; the script exits non-zero if any failed. `bench train` saves its JSON after each run, so a part
# stopped early keeps the runs it finished. PART_TIMEOUT: seconds each part may run (default: no bound); a part past it
# gets SIGTERM, then SIGKILL 10 s later, and the next part starts.
set -u
OUT=${OUT:-benchmarks}
PY=${PY:-python3}
BUDGET=${BUDGET:-15}
PARTS=${*:-train model tests ablate flash profile modes}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if [ -n "${PART_TIMEOUT:-}" ] && ! [ "$PART_TIMEOUT" -gt 0 ] 2>/dev/null; then
    echo "PART_TIMEOUT=$PART_TIMEOUT: give whole seconds, e.g. PART_TIMEOUT=180"; exit 1
fi
mkdir -p "$OUT"
# one bounded part: SIGTERM goes to the whole group; the part's python stops (after saving, past the first step) while
# this shell waits for it, and SIGKILL follows after 10 s
[ -n "${GPU_SH_PART:-}" ] && trap : TERM
gpu=$($PY -c "import torch, sys
if not torch.cuda.is_available(): sys.exit('benchmarks/gpu.sh measures a CUDA GPU and torch sees none: run it on a GPU machine')
n = torch.cuda.get_device_name(); print(n.split()[1].lower() if ' ' in n else n.lower())") || exit 1
data=data/builtin-8192
if [ ! -f "$data/meta.json" ]; then
    $PY -m minillm prepare --corpus builtin --tokenizer bpe --vocab-size 8192 --out "$data" --no-progress || exit 1
fi
failed=""
if [ -n "${PART_TIMEOUT:-}" ]; then  # each part in its own bounded run of this script
    for part in $PARTS; do
        PART_TIMEOUT= GPU_SH_PART=1 timeout -k 10 "$PART_TIMEOUT" sh "$0" "$part" || failed="$failed $part"
    done
    echo "== done ($(date +%T))${failed:+; failed or stopped:$failed}"
    [ -z "$failed" ]
    exit
fi
for part in $PARTS; do
    echo "== $part ($(date +%T))"
    case "$part" in
    train)  # small, medium and large with every setting on
        $PY -m minillm bench train --data "$data" --presets small medium large --budgets "$BUDGET" --json "$OUT/train-$gpu.json" ;;
    model)  # forward+backward of demo and small; generation at batch 1 and 8, growing cache vs static vs compiled
        $PY -m minillm bench model --presets demo small --variants mha --backends sdpa --gen-batch 1 8 --steps 3 \
            --json "$OUT/model-$gpu.json" ;;
    tests)  # the gpu-flagged tests
        MINILLM_TEST_FLAGS=gpu $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_flash.py \
            >"$OUT/gpu-tests-$gpu.log" 2>&1
        rc=$?; cat "$OUT/gpu-tests-$gpu.log"; [ $rc -eq 0 ] ;;
    ablate)  # small with every setting on, then each switched off alone
        $PY -m minillm bench train --data "$data" --presets small --budgets "$BUDGET" --ablate \
            --json "$OUT/train-ablate-$gpu.json" ;;
    flash)  # lesson 14's attention kernels, forward + backward, bf16, causal, 1k to 16k tokens
        $PY -c "import sys, torch; from minillm.flash import attention_speed; from minillm.utils import write_json
rows = attention_speed(); [print(r) for r in rows]
write_json(sys.argv[1], dict(benchmark='attention', device=torch.cuda.get_device_name(), runs=rows))" \
            "$OUT/flash-$gpu.json" ;;
    profile)  # where the time of small's and medium's training steps and batch-1 decoding goes (torch.profiler)
        $PY -m minillm bench profile --data "$data" --preset small --json "$OUT/profile-small-$gpu.json" &&
            $PY -m minillm bench profile --data "$data" --preset medium --json "$OUT/profile-medium-$gpu.json" ;;
    modes)  # small with CUDA graphs in training (--compile-mode reduce-overhead), then with a 4x larger batch
        $PY -m minillm bench train --data "$data" --presets small --budgets "$BUDGET" --compile-mode reduce-overhead \
            --json "$OUT/train-small-reduce-overhead-$gpu.json" &&
            $PY -m minillm bench train --data "$data" --presets small --budgets "$BUDGET" --batch-tokens 65536 \
                --json "$OUT/train-small-batch64-$gpu.json" ;;
    *) echo "unknown part $part: use train, model, tests, ablate, flash, profile or modes"; false ;;
    esac || failed="$failed $part"
done
echo "== done ($(date +%T))${failed:+; failed:$failed}"
[ -z "$failed" ]
