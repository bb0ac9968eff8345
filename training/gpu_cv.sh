#!/usr/bin/env bash
# Issue 20 in ONE call of a lent GPU machine: the 4-fold cross-validation by patient of the default
# model's recipe (its three stages) and the final model on every case, trained at once as 5 chains
# on the GPU from a data pack (no datasets, SimpleITK or MONAI needed there), stopped before a
# wall-clock budget, the results packed into $OUT (7 files of the archive + this script's log).
#
#   bash training/gpu_cv.sh [key=value ...]     # overrides for every stage, as crossval.py run's
#
# Here, first (README, "The cross-validation on a lent GPU"):
#   python training/pack.py -o .gpudata/issue20.pack --config training/configs/default_wholegland.yaml \
#       --config training/configs/default_wholegland_finetune.yaml \
#       --config training/configs/default_wholegland_presence_onesided.yaml \
#       "data.sources.2={format: prostatex, path: ../shared/data/prostatex}"
# The device call (recipe B0 of docs/default_model/crossval/README.md), timeout_s 600, carry
# [".gpudata/issue20.pack"]: CV_OUT=runs/cv-b0 bash training/gpu_cv.sh
#   "data.sources.2={format: prostatex, path: ../shared/data/prostatex, weight: 0}"
# Back here: python training/crossval.py restore /work/.device/...  (prints the command that evaluates).
#
# Settings (environment, all optional):
#   BUDGET_MIN     wall clock of this whole script in minutes (default 9.3; the call's timeout_s is 600)
#   PACK           the data pack (default .gpudata/issue20.pack)
#   CV_OUT         the cross-validation folder (default runs/cv; SMOKE: runs/cv-smoke)
#   FOLDS          number of folds (default 4); FINAL=0 leaves the final model out
#   PARALLEL       chains trained at once (default 5: the folds and the final model)
#   RECIPE         the stage configs, in order (default: the default model's three)
#   GPU_OVERRIDES  the GPU settings (default below: device augmentation, batch 4 with half the
#                  iterations, so each stage sees the recipe's patches; 2 loader workers and 2 threads
#                  per chain on the 16 cores; validation only after each stage's last epoch)
#   FOLD_LIST      the folds to train (default: all), e.g. "0 1": chains that cannot all finish in one
#                  call are better trained two at a time, each to its end
#   COMPRESS=1     give each stage a time limit of its share of the budget (the poly schedule then ends
#                  early: FEWER patches than the recipe, a different recipe, to be reported as such).
#                  Default: the recipe's own schedule; a stage the hard stop interrupts keeps its
#                  whole checkpoint (where it fits what comes back) and resumes in the next call
#   SMOKE=1        a rehearsal of everything in about 2 minutes (2 epochs of 5 iterations per stage)
set -uo pipefail
T0=$(date +%s)
PY=${PYTHON:-python3}
PACK=${PACK:-.gpudata/issue20.pack}
FOLDS=${FOLDS:-4}
FINAL=${FINAL:-1}
FOLD_FLAGS=()
for f in ${FOLD_LIST:-}; do FOLD_FLAGS+=(--fold "$f"); done
PARALLEL=${PARALLEL:-5}
RECIPE=${RECIPE:-training/configs/default_wholegland.yaml training/configs/default_wholegland_finetune.yaml training/configs/default_wholegland_presence_onesided.yaml}
GPU_OVERRIDES=${GPU_OVERRIDES:-augment.on_device=true train.batch_size=4 train.iterations_per_epoch=25 train.num_workers=2 train.num_threads=2 train.validate_every=1000}
EXTRA=("$@")
if [ -n "${SMOKE:-}" ]; then
    BUDGET_MIN=${BUDGET_MIN:-3}
    CV_OUT=${CV_OUT:-runs/cv-smoke}
    EXTRA+=(train.epochs=2 train.iterations_per_epoch=5)
else
    BUDGET_MIN=${BUDGET_MIN:-9.3}
    CV_OUT=${CV_OUT:-runs/cv}
fi
RESULTS=${OUT:-runs/gpu_cv_out}   # the device's $OUT comes back
mkdir -p "$RESULTS" "$CV_OUT/logs"
exec > >(tee -a "$RESULTS/gpu_cv.log") 2>&1
export PYTHONUNBUFFERED=1

elapsed() { echo $(( $(date +%s) - T0 )); }
CONFIGS=()
for c in $RECIPE; do CONFIGS+=(--config "$c"); done
FIRST=${RECIPE%% *}

echo "== gpu_cv.sh: budget $BUDGET_MIN min, $FOLDS folds, final $FINAL, $PARALLEL at once, pack $PACK -> $CV_OUT"
echo "== overrides: $GPU_OVERRIDES ${EXTRA[*]}"
nvidia-smi -L || true
nproc
$PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

# 1. fail fast (about 30 s): the pack serves the recipe, and a few iterations train on the GPU from it
$PY training/pack.py --check "$PACK" "${CONFIGS[@]}" "${EXTRA[@]}" || exit 2
rm -rf /tmp/gpu_cv_check
timeout 150 $PY training/train.py --config "$FIRST" --pack "$PACK" output_dir=/tmp/gpu_cv_check data.folds="$FOLDS" \
    data.fold=0 $GPU_OVERRIDES "${EXTRA[@]}" train.epochs=1 train.iterations_per_epoch=3 train.validate_every=1 \
    || { echo "== self-check failed"; exit 3; }

# 2. the chains, in parallel; each stage's time limit is its share (by patches) of TRAIN_MIN, and a
#    hard stop leaves ARCHIVE_S for packing up. Chain overhead (start, pack, validation): ~1 min.
ARCHIVE_S=40
LEFT_S=$($PY -c "print(int($BUDGET_MIN * 60) - $(elapsed))")
TRAIN_MIN=$($PY -c "print(max(0.5, round(($LEFT_S - $ARCHIVE_S - 75) / 60, 2)))")
BUDGET_FLAGS=()
[ -n "${COMPRESS:-}" ] && BUDGET_FLAGS=(--time-budget-min "$TRAIN_MIN")
FINAL_FLAG=--final
[ "$FINAL" = 0 ] && FINAL_FLAG=
echo "== $(elapsed) s: training (${BUDGET_FLAGS[*]:-the recipe schedule, exact}), hard stop in $(( LEFT_S - ARCHIVE_S )) s"
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$CV_OUT/logs/gpu.csv" 2>/dev/null &
 echo $! > /tmp/gpu_cv_smi.pid)
timeout -k 10 $(( LEFT_S - ARCHIVE_S )) $PY training/crossval.py run -o "$CV_OUT" --folds "$FOLDS" "${CONFIGS[@]}" \
    "${FOLD_FLAGS[@]}" $FINAL_FLAG --train-only --parallel "$PARALLEL" --pack "$PACK" "${BUDGET_FLAGS[@]}" \
    $GPU_OVERRIDES "${EXTRA[@]}"
RC=$?
kill "$(cat /tmp/gpu_cv_smi.pid)" 2>/dev/null
echo "== $(elapsed) s: training ended (exit code $RC; 124: stopped by the hard limit, resumable)"

# 3. pack up: 7 files (the chains, meta, manifest) beside this log
$PY training/crossval.py archive -o "$CV_OUT" "$RESULTS" --max-files 7 || exit 4
cat "$CV_OUT/stage_times.json" 2>/dev/null
$PY -c "import json, sys; m = json.load(open(sys.argv[1])); [print(k, v) for k, v in m['stages'].items()]" "$RESULTS/cv-manifest.json"
echo "== $(elapsed) s: done"
exit $RC
