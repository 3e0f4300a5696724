#!/usr/bin/env bash
# The whole path on the small clip bundled in the repository, with one command:
#   bash demo.sh
# 1. sets up .venv on first use (scripts/setup_env.sh: nothing but Python and pip needed)
# 2. preprocesses tests/data/talker_a_4s.mp4 as dataset/sample (frames, landmarks, crops,
#    and ave audio features from an audio encoder learned on the clip itself)
# 3. trains SyncNet (the sync judge) and the lip-sync U-Net: a tiny model for a few minutes
#    on a CPU, the default (base) width properly when a CUDA GPU is present
# 4. scores every checkpoint on the held-out tail of the clip and picks best.pth
# 5. renders unseen audio (tests/data/heldout_2s.wav) with best.pth and scores that too
# and prints where the video and the scores are. Re-running skips finished stages.
# Override the training length with DEMO_EPOCHS=N (and DEMO_DEVICE=cpu|cuda).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh requirements.txt
python=.venv/bin/python
name=sample
heldout_audio=tests/data/heldout_2s.wav
# A quarter of the 4 s clip (25 frames) is held out: enough frames to measure sync on.
val_fraction=0.25

if [ "${DEMO_DEVICE:-auto}" = auto ]; then
    if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        device=cuda
    else
        device=cpu
    fi
else
    device="$DEMO_DEVICE"
fi
if [ "$device" = cuda ]; then
    # A GPU trains the default model size properly in a few minutes.
    model_size=base; epochs="${DEMO_EPOCHS:-100}"; save_interval=10; batch_size=8; lr=1e-3
    syncnet_epochs=100; syncnet_batch=32; speed=(--amp --num_workers 4)
else
    # Two CPU cores: the tiny width, a few minutes, a high learning rate annealed to zero,
    # a checkpoint every other epoch so the evaluation has several to choose from.
    model_size=tiny; epochs="${DEMO_EPOCHS:-10}"; save_interval=2; batch_size=2; lr=5e-3
    syncnet_epochs=40; syncnet_batch=16; speed=(--num_workers 0)
fi

mkdir -p "dataset/$name"
if [ ! -f "dataset/$name/$name.mp4" ]; then
    cp tests/data/talker_a_4s.mp4 "dataset/$name/$name.mp4"
fi

echo "== 1/5 preprocessing dataset/$name/$name.mp4 (frames, landmarks, crop boxes, ave audio features)"
"$python" data_utils/process.py --input_video "dataset/$name/$name.mp4" --output_dir "dataset/$name" \
    --asr ave --device "$device" --quiet

echo "== 2/5 training SyncNet ($model_size, $syncnet_epochs epochs on $device) -> checkpoint/$name/syncnet/"
# 75 training frames are few for SyncNet: a higher learning rate than its default 1e-4.
"$python" train_syncnet.py --name "$name" --asr ave --model_size "$model_size" --epochs "$syncnet_epochs" \
    --batch_size "$syncnet_batch" --lr 1e-3 --save_interval "$syncnet_epochs" --val_fraction "$val_fraction" \
    --device "$device" --resume --quiet "${speed[@]}"

echo "== 3/5 training the U-Net ($model_size, $epochs epochs on $device, the default objective) -> checkpoint/$name/"
"$python" train_328.py --name "$name" --asr ave --model_size "$model_size" --epochs "$epochs" \
    --save_interval "$save_interval" --batch_size "$batch_size" --lr "$lr" --lr_schedule cosine --use_syncnet \
    --val_fraction "$val_fraction" --device "$device" --see_res --resume --quiet "${speed[@]}"

echo "== 4/5 scoring every checkpoint on the held-out tail, choosing checkpoint/$name/best.pth"
"$python" evaluate_328.py --name "$name" --device "$device" --quiet

echo "== 5/5 rendering unseen audio ($heldout_audio) with best.pth, and scoring it"
video="result/${name}_$(basename "$heldout_audio" .wav)_best.mp4"
"$python" inference_328.py --name "$name" --audio_path "$heldout_audio" --checkpoint best \
    --device "$device" --output "$video" --no_progress
"$python" evaluate_328.py --name "$name" --checkpoint best --audio_path "$heldout_audio" --device "$device" \
    --quiet

echo
echo "done:"
echo "  video (unseen audio):        $video"
echo "  held-out scores:             checkpoint/$name/evaluation/heldout/table.md (and scores.json)"
echo "  truth | generated, held out: checkpoint/$name/evaluation/heldout/strip.png and epoch_*_side_by_side.mp4"
echo "  unseen-audio scores:         checkpoint/$name/evaluation/audio_$(basename "$heldout_audio" .wav)/table.md"
echo "  chosen checkpoint:           checkpoint/$name/best.pth; training log: checkpoint/$name/training.log"
