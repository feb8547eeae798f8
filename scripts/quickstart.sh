#!/usr/bin/env bash
# The main job on the sample data, from nothing: install, make sample images, pretrain a small
# encoder for a few minutes, embed, index, search, deduplicate and score the embeddings.
# Idempotent: re-running starts from fresh outputs in quickstart-out/ (the .venv is kept).
# Environment: QUICKSTART_MINUTES (training budget, default 3), QUICKSTART_IMAGES (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
out=quickstart-out
minutes="${QUICKSTART_MINUTES:-3}"
n_images="${QUICKSTART_IMAGES:-1000}"
rm -rf "$out"
mkdir -p "$out"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

step "1/7 generating $n_images sample images (10 shape classes, planted near-duplicates)"
sslsearch sample-data "$out/images" --n-images "$n_images" --seed 0

step "2/7 pretraining a resnet18 with SimCLR on them for $minutes minute(s) at 32 px"
# The sample images' colours are random (a nuisance by construction), so the views get a random hue
# (±0.5, the whole colour wheel) and more grayscale: the loss cannot match views by colour and learns shape.
sslsearch train "$out/images" --out "$out/run" --method simclr --backbone resnet18 --image-size 32 \
  --set augmentation.hue=0.5 --set augmentation.grayscale_probability=0.4 --max-minutes "$minutes"

step "3/7 embedding the images with the trained encoder"
sslsearch embed "$out/images" --encoder "$out/run" --out "$out/embeddings"

step "4/7 building an index (kind chosen automatically) and showing its card"
sslsearch index build "$out/embeddings" --out "$out/index"   # prints the card; later: sslsearch index info

step "5/7 searching: the 5 nearest neighbours of three images (the first hit is the image itself)"
# the first file of each class, by glob (no `ls | head`: under pipefail its SIGPIPE can end the script)
queries=$(for class in circle star checker; do files=("$out/images/$class"/*); echo "${files[0]}"; done)
# shellcheck disable=SC2086
sslsearch search "$out/index" $queries -k 5

step "6/7 deduplicating (threshold self-calibrated for precision)"
sslsearch dedup "$out/embeddings" --out "$out/duplicates" --report

step "7/7 how good are the embeddings? k-NN accuracy (each image's own class, leave-one-out; chance 0.10)"
sslsearch bench knn "$out/embeddings" --k 20
echo "the same for an untrained resnet18 (random init), the baseline training must beat:" >&2
sslsearch embed "$out/images" --encoder timm:resnet18 --image-size 32 --out "$out/baseline-embeddings"
sslsearch bench knn "$out/baseline-embeddings" --k 20

printf '\nDone. Outputs are in %s/: run/ (encoder), embeddings/, index/, duplicates/ (report.html), baseline-embeddings/.\n' "$out" >&2
