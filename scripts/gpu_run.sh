#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, on a CUDA machine with this repository, MONAI and the package's
# requirements importable:   OUT=gpu_results bash scripts/gpu_run.sh
#   1. benchmark.py: training (batch 4 at 256 x 256) and one real-size BraTS-like case, DiffMedDINOv3 from the bundle
#      configs against SwinUNETR-2D and SegResNet-3D (brats bundle settings), bf16 autocast as the configs ship;
#   2. quality.py: DiffMedDINOv3's default network (brats preset; ViT-B/16 teacher, randomly initialised: no weights
#      here) trained through train.json on skull-stripped 240 x 240 x 155 phantoms from the slice store with the
#      bundle's loader workers, then its held-out cases segmented and scored;
#   3. agreement.py: with those trained weights, bf16 against float32 predictions on CUDA and on the CPU.
#   0. (issue 25) training only, one benchmark run per variant and batch (TRAIN_BATCHES, default "4 16"):
#      DiffMed eager, compiled (train#trainer#compile, MONAI's switch; mode "default"), with CUDA graphs
#      (compile mode "reduce-overhead") and eager with activation checkpointing (network_def#use_checkpoint), each
#      beside SwinUNETR-2D as MONAI's SupervisedTrainer trains it: slices/s, share of the FLOP floor, peak memory,
#      aten ops per step -> $OUT/train_<variant>_b<batch>.json/.log. TRAIN_ONLY=1 stops after it.
# SMALL=1 runs the same steps with the tiny preset at toy sizes (a check of the script on a CPU).
set -u
OUT=${OUT:-gpu_results}
WORK=${WORK:-/tmp/diffmed_gpu_run}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if [ "${SMALL:-0}" = 1 ]; then
    PRESET=tiny TEACHER=tiny BUDGET=${BUDGET:-8} SHAPE="[96,96,64]" RIM="[1.0,2.0]" BENCH_ARGS=(--image_size 64 --volume_shape "[64,64,8]" --steps 2)
    TRAIN_ARGS=(--image_size 64 --steps 2)
else
    PRESET=brats TEACHER=vitb16 BUDGET=${BUDGET:-100} SHAPE="[240,240,155]" RIM="[2.0,5.0]" BENCH_ARGS=(--steps 20)
    TRAIN_ARGS=(--steps "${TRAIN_STEPS:-8}")
fi
PHANTOMS=(--workdir "$WORK/quality" --presets "['$PRESET']" --num_cases 8 --num_test 2 --shape "$SHAPE" --rim_mm "$RIM")
{ nvidia-smi; lscpu; } > "$OUT/machine.txt" 2>&1
declare -A VARIANTS=(
    [eager]="{}"
    [compiled]="{'compile': True, 'compile_kwargs': {'mode': 'default'}}"
    [graphs]="{'compile': True, 'compile_kwargs': {'mode': 'reduce-overhead'}}"
    [checkpointed]="{'network_def#use_checkpoint': True}"
)
for batch in ${TRAIN_BATCHES:-4 16}; do
    for variant in ${TRAIN_VARIANTS:-eager compiled graphs checkpointed}; do
        timeout "${TRAIN_TIMEOUT:-240}" python scripts/benchmark.py --device "$DEVICE" --presets "['$PRESET']" \
            "${TRAIN_ARGS[@]}" --sections "['training']" --batch_size "$batch" --repeats 2 --warmup 1 \
            --overrides "${VARIANTS[$variant]}" --output "$OUT/train_${variant}_b${batch}.json" \
            > "$OUT/train_${variant}_b${batch}.log" 2>&1; echo "train $variant batch $batch rc $?"
        grep -E "^\| (diffmed|swin_unetr_2d) " "$OUT/train_${variant}_b${batch}.log"
    done
done
[ "${TRAIN_ONLY:-0}" = 1 ] && exit 0
python scripts/quality.py "${PHANTOMS[@]}" --models "[]" > "$OUT/phantoms.log" 2>&1 &  # CPU work beside step 1
phantoms=$!
timeout "${BENCH_TIMEOUT:-260}" python scripts/benchmark.py --device "$DEVICE" --presets "['$PRESET']" "${BENCH_ARGS[@]}" \
    --output "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1; echo "benchmark rc $?"
wait $phantoms; echo "phantoms rc $?"
timeout "${QUALITY_TIMEOUT:-240}" python scripts/quality.py "${PHANTOMS[@]}" --models "['diffmed']" --teacher "$TEACHER" \
    --budget_s "$BUDGET" --threads 8 --overrides "{'num_workers': 6}" > "$OUT/quality.log" 2>&1; echo "quality rc $?"
cp "$WORK/quality/quality.json" "$WORK/quality/quality.md" "$OUT/" 2>/dev/null
timeout "${AGREEMENT_TIMEOUT:-200}" python scripts/agreement.py --checkpoint "$WORK/quality/diffmed/models/model.pt" \
    --dataset_dir "$WORK/quality/data" --presets "['$PRESET']" --teacher_arch "$TEACHER" \
    --devices "$( [ "$DEVICE" = cpu ] && echo "['cpu']" || echo "['$DEVICE','cpu']")" --output "$OUT/agreement.json" > "$OUT/agreement.log" 2>&1; echo "agreement rc $?"
tail -n 25 "$OUT/benchmark.log"; tail -n 8 "$OUT/quality.log"; tail -n 8 "$OUT/agreement.log"
