#!/bin/sh
# The GPU figures the training lesson's speed section and `minillm bench` record, in one pass on a CUDA machine.
# Run from the repository root: `sh benchmarks/gpu.sh [part]`, part = tests, train, model or all (default).
# It needs only a python3 that has torch, numpy, regex, sentencepiece and tqdm (PYTHONPATH=. runs this checkout
# without installing it); it writes its JSON into $OUT (default benchmarks/), named after the GPU.
set -eu
OUT=${OUT:-benchmarks}
PY=${PY:-python3}
PART=${1:-all}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUT"
gpu=$($PY -c "import torch; n = torch.cuda.get_device_name(); print(n.split()[1].lower() if ' ' in n else n.lower())")
data=data/builtin-8192
if [ ! -f "$data/meta.json" ]; then
    $PY -m minillm prepare --corpus builtin --tokenizer bpe --vocab-size 8192 --out "$data" --no-progress
fi
case "$PART" in all|tests)
    # the gpu-flagged tests (about a minute)
    MINILLM_TEST_FLAGS=gpu $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_flash.py 2>&1 | tee "$OUT/gpu-tests-$gpu.log"
esac
case "$PART" in all|train)
    # small with each speed setting switched off in turn, then medium and large with all on (15 s of training each,
    # after the first, compiling step)
    $PY -m minillm bench train --data "$data" --presets small --budgets 15 --ablate --json "$OUT/train-ablate-$gpu.json"
    $PY -m minillm bench train --data "$data" --presets medium large --budgets 15 --json "$OUT/train-$gpu.json"
esac
case "$PART" in all|model)
    # generation: demo and small, batch 1 and 8, growing cache vs static vs static compiled
    $PY -m minillm bench model --presets demo small --variants mha --backends sdpa --gen-batch 1 8 --steps 3 \
        --json "$OUT/model-$gpu.json"
esac
