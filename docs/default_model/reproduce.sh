#!/usr/bin/env bash
# Rebuild the default model prostate-wholegland-t2 from ../shared/data: train (a first
# schedule, a shorter fine-tuning one from its last weights, then a third short one with the
# slice-presence loss), evaluate, package (metrics, model card, catalogue entry) and write
# the evaluation report.
#
#   bash docs/default_model/reproduce.sh            # all steps (training takes ~6.5 h on a 2-core CPU)
#   SKIP_TRAINING=1 bash docs/default_model/reproduce.sh   # evaluate and package existing runs
#
# Run from the repository root. The model card is taken from the bundled package
# (UNetSegmentLib/models/prostate-wholegland-t2/README.md): edit its numbers after a new run.
set -euo pipefail

BASE_CONFIG=training/configs/default_wholegland.yaml
BASE_RUN=runs/default-wholegland
FINETUNE_CONFIG=training/configs/default_wholegland_finetune.yaml
FINETUNE_RUN=runs/default-wholegland-finetune
CONFIG=training/configs/default_wholegland_presence_onesided.yaml
RUN=runs/default-wholegland-presence-onesided
PKG=UNetSegmentLib/models/prostate-wholegland-t2
DOC=docs/default_model
PROSTATEX=../shared/data/prostatex/ProstateX-0000
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ ! -d ../shared/data/promise12 ]; then
    echo "reproduce.sh: ../shared/data/promise12 is missing (see ../shared/data/README.md)" >&2
    exit 1
fi
VERSION=$(python -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['model']['version'])" "$CONFIG")
ZIP_URL="https://github.com/unetsegment/UNetSegment/releases/download/v$VERSION/prostate-wholegland-t2-$VERSION.zip"

if [ -z "${SKIP_TRAINING:-}" ]; then
    python training/train.py --config "$BASE_CONFIG"
    python training/train.py --config "$FINETUNE_CONFIG"   # init_from: the first run's last.pt
    python training/train.py --config "$CONFIG"            # init_from: the fine-tuning's last.pt
fi

# 1. a draft package of the last epoch (not the best one: the validation cases must not pick the model)
python training/export.py "$RUN" "$WORK/draft" --checkpoint last.pt --version "$VERSION"

# 2. evaluate: the held-out PROMISE12 patients at each --quality (standard is the default),
#    and the unseen ProstateX case against both AI labels
rm -rf "$DOC"/eval_*
python training/evaluate.py --model "$WORK/draft" --data "$CONFIG" --split validation \
    -o "$DOC/eval_promise12_validation" --save-predictions
for quality in fast best; do
    python training/evaluate.py --model "$WORK/draft" --data "$CONFIG" --split validation --quality "$quality" \
        -o "$DOC/eval_promise12_validation_$quality" --save-predictions
done
for ref in Guerbet23 Bosma22b; do
    lower=$(echo "$ref" | tr '[:upper:]' '[:lower:]')
    python training/evaluate.py --model "$WORK/draft" --image "$PROSTATEX/t2w.nii.gz" \
        --label "$PROSTATEX/labels/wholegland_AI_$ref.nii.gz" --label-map 1=prostate \
        --case-id "ProstateX-0000_$ref" --source prostatex -o "$DOC/eval_prostatex_$lower" --save-predictions
done

# 3. the package: weights of the last epoch, the results in model.json, the model card, its catalogue entry
cp "$PKG/README.md" "$WORK/card.md"
python training/export.py "$RUN" "$WORK/$(basename "$PKG")" --checkpoint last.pt --version "$VERSION" \
    --eval "promise12_validation=$DOC/eval_promise12_validation" \
    --eval "promise12_validation_fast=$DOC/eval_promise12_validation_fast" \
    --eval "promise12_validation_best=$DOC/eval_promise12_validation_best" \
    --eval "prostatex_0000_vs_guerbet23=$DOC/eval_prostatex_guerbet23" \
    --eval "prostatex_0000_vs_bosma22b=$DOC/eval_prostatex_bosma22b" \
    --add "README.md=$WORK/card.md" \
    --catalogue UNetSegmentLib/models/catalogue.json --url "$ZIP_URL"
rm -rf "$PKG"
cp -r "$WORK/$(basename "$PKG")" "$PKG"

# 4. the report, with figures; the predictions served its overlays and are not kept
rm -rf "$DOC/report"
python training/benchmark.py --model "$PKG" --run "$BASE_RUN" --run "$FINETUNE_RUN" --run "$RUN" -o "$DOC/report" \
    --title "prostate-wholegland-t2 $VERSION: evaluation report" \
    --eval "$DOC/eval_promise12_validation" --eval "$DOC/eval_promise12_validation_fast" \
    --eval "$DOC/eval_promise12_validation_best" \
    --eval "$DOC/eval_prostatex_guerbet23" --eval "$DOC/eval_prostatex_bosma22b"
rm -rf "$DOC"/eval_*/predictions
echo "reproduce.sh: $PKG $VERSION, report in $DOC/report/report.md"
