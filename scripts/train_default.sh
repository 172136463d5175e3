#!/usr/bin/env bash
# Reproduce the shipped model bundle (fusion/bundles/default) and its model card, then the
# leave-one-family-out figures. Run after `bash scripts/test.sh` or `bash scripts/demo.sh`
# has made ./.venv. WORK (default /tmp/crosscheck-train) holds the cohorts (~10 GB).
#
#   bash scripts/train_default.sh              # CPU: about an hour on 2 cores
#   DEVICE=cuda bash scripts/train_default.sh  # on a GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
source .venv/bin/activate
WORK="${WORK:-/tmp/crosscheck-train}"
DEVICE="${DEVICE:-cpu}"
EPOCHS="${EPOCHS:-30}"
mkdir -p "$WORK"

# Seeds 1 (training) and 2 (held out) are never used by the demo (20261125) or the tests.
crosscheck simulate --out "$WORK/train" --patients 1500 --seed 1 --nuisance-rate 0.3 -q
crosscheck simulate --out "$WORK/heldout" --patients 200 --seed 2 --nuisance-rate 0.3 -q

crosscheck train --data "$WORK/train" --eval-data "$WORK/heldout" --out fusion/bundles/default \
  --work "$WORK/train-work" --epochs "$EPOCHS" --device "$DEVICE" --version 0.3.0 -q

# Leave one generator family out of training; evaluate on the held-out cohort, where it is present.
for family in ${LOFO_FAMILIES:-gan diffusion}; do
  crosscheck train --data "$WORK/train" --out "$WORK/lofo-$family" --work "$WORK/lofo-$family-work" \
    --epochs "$EPOCHS" --device "$DEVICE" --exclude-family "$family" -q
  crosscheck evaluate --data "$WORK/heldout" --model "$WORK/lofo-$family" --out "$WORK/lofo-$family-eval" -q
done
