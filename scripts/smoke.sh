#!/usr/bin/env bash
# The whole pipeline in a few minutes on a CPU, with no weights to download: preprocess the two sample
# videos, train both stages for about a minute each with the smoke configs, and dub the official demo template
# with the first seconds of the demo speech. The networks are barely trained, so the face is a blur; the point
# is that every step runs and the output is a real video.
#   bash scripts/smoke.sh [OUT_DIR]
# Runs from any folder. OUT_DIR (default runs/smoke) is relative to the folder it is run from. The sample media
# are found by data/samples.py ($IPLAP_SAMPLES, its fallback folder, or a sha256-checked download).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
mkdir -p "${1:-runs/smoke}"
out=$(cd "${1:-runs/smoke}" && pwd)
samples=$(cd "$repo" && "$python" -m data.samples)
mkdir -p "$out/videos"
ln -sf "$samples/talk_a.mp4" "$samples/talk_b.mp4" "$out/videos/"

"$python" "$repo/preprocess.py" --input-root "$out/videos" --output-root "$out/records" --workers 2
"$python" "$repo/train_landmark.py" --config "$repo/configs/landmark_smoke.yaml" "run_dir=$out/landmark" \
    "data.records=$out/records" "data.val_list=$out/records"
"$python" "$repo/train_render.py" --config "$repo/configs/render_smoke.yaml" "run_dir=$out/render" \
    "data.records=$out/records" "data.val_list=$out/records"
newest() { ls "$1"/step_*.pt | sort -V | tail -n 1; }
"$python" "$repo/inference.py" --video "$samples/template_129.mp4" --audio "$samples/speech_audio2.wav" \
    --output "$out/dubbed.mp4" --landmark-ckpt "$(newest "$out/landmark")" \
    --renderer-ckpt "$(newest "$out/render")" --save-sketch refs=3 audio_seconds=2
echo "smoke run done: $out/dubbed.mp4 (and $out/dubbed_sketch.mp4)"
