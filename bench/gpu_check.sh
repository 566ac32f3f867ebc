#!/usr/bin/env bash
# The GPU check, one prepared command for a lent GPU machine (at most about 8 minutes on one H100):
#   bash bench/gpu_check.sh            (writes its log and tables under $OUT, or /tmp/gpu_check)
# 1. the environment; 2. the tests marked `cuda` (skipped without a GPU); 3. the three synthetic jobs on
# the GPU at bf16; 4. bench/gpu_throughput.py: CAMA ResNet-50 (3 branches) and CAMA on a ViT-S at 256x128,
# bf16 / fp16, bare steps and with the data pipeline on a Market-1501-sized tree; 5. the Market-1501-size
# rehearsal at 256x128, a few hundred training steps then a full evaluation. Each part has its own time
# limit, so one slow part does not take the others' time; every part's output is in the log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-/tmp/gpu_check_data}
LOG="$OUT/gpu_check.log"
part() { echo; echo "=== $1 ($(date +%T))"; }
{
part "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
"$PY" -c "import torch, lightning, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| lightning', lightning.__version__, '| timm', timm.__version__)" \
  || { echo "the Python environment lacks the project's dependencies: pip install -e '.[test]'"; exit 2; }
nproc

part "tests marked cuda"
timeout 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -15

part "synthetic jobs on the GPU (bf16-mixed)"
for config in cama_synthetic protonet_synthetic retrieval_synthetic; do
  start=$(date +%s)
  timeout 100 "$PY" train.py fit --config "configs/$config.yaml" --trainer.accelerator gpu \
    --trainer.precision bf16-mixed --trainer.logger.init_args.save_dir "$OUT/runs" > "$OUT/$config.log" 2>&1
  rc=$?
  echo "$config: exit $rc, $(( $(date +%s) - start )) s; $(grep -hoE '(test/(mAP|acc|precision_at_1|recall@1)) +[0-9.]+' \
    "$OUT/$config.log" | tr -s ' ' | paste -sd ';')"
done

part "training throughput (bench/gpu_throughput.py)"
timeout 200 "$PY" bench/gpu_throughput.py --data-root "$DATA" --workers "$(nproc)" --loop-steps 150 2>&1 | tail -12

part "Market-1501-size rehearsal at 256x128 (300 training steps, full evaluation)"
timeout 150 "$PY" bench/real_scale.py --data-root "$DATA" --configs cama_market1501 --reid-size 256 128 \
  --train-steps 300 --workers "$(nproc)" --out "$OUT" \
  --extra --trainer.accelerator gpu --trainer.precision bf16-mixed 2>&1 | tail -12
part "done"
} 2>&1 | tee "$LOG"
