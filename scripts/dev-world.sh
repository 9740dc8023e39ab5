#!/usr/bin/env bash
# The development world's figures for one difficulty setting (README, "The development world"):
# pseudo-labels from 600 videos of Charades-STA's train split, the model trained on them, then
# proposal recall, pseudo-query accuracy and grounding on 800 held-out train-split videos.
#
#   scripts/dev-world.sh OUT SETTING [--set KEY=VALUE ...]
#
# SETTING: real-like, weak-scene, noisy, very-noisy or weak-tower (the world's `structure`
# keys; weak-tower is very-noisy's features with a captioner's tower twice as far off), or
# strong-scene, real-like-again (real-like's keys, another seed) or cluttered (built to check
# the regressed span's handicap; the fusion by stream was then chosen on them too). The --set
# pairs go to propose, train and eval, never to synth, so one pair of worlds in OUT serves
# every variant of the pipeline: worlds already in OUT are reused, everything else is redone.
# MM names the binary (default target/release/momentminer); EPOCHS the epochs (12); VIDEOS the
# pseudo-labelled videos (600; another count gets its own world, train-VIDEOS, whose first 600
# videos are the default's); WORLD_SEED draws the setting's world again with that seed, in
# OUT/SETTING-sWORLD_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,17p "$0" >&2; exit 2; }
out=$1 setting=$2
shift 2
mm=${MM:-target/release/momentminer}
annotations=../shared/data/charades-sta/charades_sta_train.txt
case $setting in
  real-like) world=(--set structure.scene=3 --set structure.noise=1 --set structure.correlation=0.5) ;;
  weak-scene) world=(--set structure.scene=2 --set structure.noise=1 --set structure.correlation=0.8) ;;
  noisy) world=(--set structure.scene=2.5 --set structure.noise=3 --set structure.correlation=0.6) ;;
  very-noisy) world=(--set structure.scene=2.5 --set structure.noise=4 --set structure.correlation=0.6) ;;
  weak-tower) world=(--set structure.scene=2.5 --set structure.noise=4 --set structure.correlation=0.6 --set structure.tower_gap=2) ;;
  # Worlds of their own seed, built to check the handicap (README, "Three worlds built to check").
  strong-scene) world=(--set structure.scene=3.5 --set structure.noise=2 --set structure.correlation=0.7 --set structure.distractors=1.5 --set structure.tower_gap=0.6 --set structure.seed=23) ;;
  real-like-again) world=(--set structure.scene=3 --set structure.noise=1 --set structure.correlation=0.5 --set structure.seed=37) ;;
  cluttered) world=(--set structure.scene=2 --set structure.noise=3.5 --set structure.correlation=0.4 --set structure.distractors=2 --set structure.tower_gap=1 --set structure.seed=31) ;;
  *) echo "unknown setting $setting: real-like, weak-scene, noisy, very-noisy, weak-tower, strong-scene, real-like-again or cluttered" >&2; exit 2 ;;
esac
name=$setting
if [ -n "${WORLD_SEED:-}" ]; then
  world+=(--set "structure.seed=$WORLD_SEED")
  name=$setting-s$WORLD_SEED
fi
worlds=$out/$name
videos=${VIDEOS:-600}
train=$worlds/train
[ "$videos" = 600 ] || train=$worlds/train-$videos
[ -d "$train" ] || "$mm" "${world[@]}" synth --structure "$annotations" --out "$train" --videos "$videos" --first-index 1000
[ -d "$worlds/eval" ] || "$mm" "${world[@]}" synth --structure "$annotations" --out "$worlds/eval" --videos 800
run=$out/$name-run
rm -rf "$run"
"$mm" --config "$train/caption.toml" "$@" propose "$train/features" --out "$run/pseudo" >/dev/null
"$mm" --config "$worlds/eval/caption.toml" "$@" propose "$worlds/eval/features" --out "$run/held-out" >/dev/null
echo "== $name: proposals and pseudo-queries on the held-out videos"
"$mm" --config "$worlds/eval/caption.toml" "$@" eval-proposals --gt "$worlds/eval/gt.jsonl" --proposals "$run/held-out"
"$mm" --config "$train/caption.toml" "$@" --set "train.epochs=${EPOCHS:-12}" \
  train --dataset "$run/pseudo/dataset" --features "$train/features" --out "$run/model" >/dev/null
echo "== $name: grounding on the held-out videos"
"$mm" --config "$worlds/eval/caption.toml" "$@" eval --model "$run/model" \
  --annotations "$worlds/eval/gt.jsonl" --features "$worlds/eval/features" --baselines
