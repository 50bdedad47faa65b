#!/usr/bin/env bash
# Train configs/cpu.cfg with GlobalPointer, Efficient GlobalPointer and GlobalPointer
# without RoPE on the same data and step budget, one after the other, and print each
# variant's best dev scores and wall time.
# Usage: bash benchmarks/heads.sh TRAIN.spacy DEV.spacy OUT_DIR [MAX_STEPS] [EVAL_FREQ]
set -euo pipefail
train=$1; dev=$2; out=$3; steps=${4:-2000}; every=${5:-500}
python=${PYTHON:-python}
mkdir -p "$out"
run() {
  local name=$1; shift
  local start=$(date +%s)
  OMP_NUM_THREADS=1 "$python" -m spacy train configs/cpu.cfg --output "$out/$name" \
    --paths.train "$train" --paths.dev "$dev" \
    --training.max_steps "$steps" --training.eval_frequency "$every" "$@" > "$out/$name.log" 2>&1
  local seconds=$(( $(date +%s) - start ))
  "$python" - "$out/$name" "$name" "$seconds" "$steps" <<'PY'
import json, sys
path, name, seconds, steps = sys.argv[1:]
meta = json.load(open(f"{path}/model-best/meta.json"))
perf = meta["performance"]
key = next(k for k in perf if k.endswith("_f") and k.startswith("spans_"))
print(f"{name:12s} steps={steps} wall={int(seconds)/60:.1f}min "
      f"best {key}={perf[key]*100:.2f} p={perf[key[:-1]+'p']*100:.2f} r={perf[key[:-1]+'r']*100:.2f}")
PY
}
run gp
run egp --components.global_pointer.model.@architectures spacy-globalpointer.EfficientGlobalPointer.v1
run gp_norope --components.global_pointer.model.rope false
