#!/usr/bin/env bash
# The whole pipeline in about five minutes on a CPU, with nothing to download: preprocess the shared sample
# videos, train both stages for about a minute each with the smoke configs, and dub the official demo template
# with the first seconds of the demo speech. The networks are barely trained, so the face is a blur; the point
# is that every step runs and the output is a real video.
#   bash scripts/smoke.sh [OUT_DIR]        (default runs/smoke; samples from $IPLAP_SAMPLES or ../shared/samples)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=$(cd "${IPLAP_SAMPLES:-../shared/samples}" && pwd)
out=${1:-runs/smoke}
mkdir -p "$out/videos"
ln -sf "$samples/talk_a.mp4" "$samples/talk_b.mp4" "$out/videos/"

python preprocess.py --input-root "$out/videos" --output-root "$out/records" --workers 2
python train_landmark.py --config configs/landmark_smoke.yaml "run_dir=$out/landmark" "data.records=$out/records" \
    "data.val_list=$out/records"
python train_render.py --config configs/render_smoke.yaml "run_dir=$out/render" "data.records=$out/records" \
    "data.val_list=$out/records"
newest() { ls "$1"/step_*.pt | sort -V | tail -n 1; }
python inference.py --video "$samples/template_129.mp4" --audio "$samples/speech_audio2.wav" \
    --output "$out/dubbed.mp4" --landmark-ckpt "$(newest "$out/landmark")" --renderer-ckpt "$(newest "$out/render")" \
    --save-sketch refs=3 audio_seconds=2
echo "smoke run done: $out/dubbed.mp4 (and $out/dubbed_sketch.mp4)"
