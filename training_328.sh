#!/usr/bin/env bash
# The whole path from a recording to checkpoints, stage by stage:
#
#   bash training_328.sh NAME GPU [ASR]      # dataset/NAME/NAME.mp4 -> checkpoint/NAME/10.pth, 20.pth, ...
#   bash training_328.sh May 0               # GPU 0, ave features
#   bash training_328.sh May 1 hubert        # GPU 1, HuBERT features
#   bash training_328.sh May 0,1,2,3         # four GPUs: SyncNet and U-Net train under torchrun
#   bash training_328.sh May cpu             # no GPU (slow; for trying the pipeline)
#
# 1. preprocess  data_utils/process.py: 25 fps frames, landmarks, crop boxes, audio, aud_<ASR>.npy
# 2. SyncNet     train_syncnet.py -> checkpoint/NAME/syncnet/best.pth
# 3. U-Net       train_328.py --use_syncnet -> checkpoint/NAME/*.pth
# 4. check       evaluate_328.py --last 1: the newest epoch (what inference uses) redraws the
#                held-out tail; one line says whether the mouth moves like the real one
#
# A re-run skips finished stages and resumes an interrupted training from its
# latest.pth. Extra options go through the environment, e.g.
#   UNET_ARGS="--model_size mobile --amp" SYNCNET_ARGS="--epochs 20" bash training_328.sh May 0
# (EVALUATE_ARGS passes options to stage 4, e.g. EVALUATE_ARGS="--no_video".)
# PYTHON picks the interpreter (default: the project's .venv when it exists, else python).
set -euo pipefail

usage="usage: bash training_328.sh NAME GPU [ASR]   (GPU: an index such as 0, a list such as 0,1, or cpu; ASR: ave | hubert | wenet)"
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "$usage" >&2
    exit 2
fi
NAME=$1
GPU=$2
ASR=${3:-ave}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$(dirname "$0")/.venv/bin/python" ]; then PYTHON="$(cd "$(dirname "$0")" && pwd)/.venv/bin/python"; else PYTHON=python; fi
fi
read -r -a UNET_EXTRA <<< "${UNET_ARGS:-}"
read -r -a SYNCNET_EXTRA <<< "${SYNCNET_ARGS:-}"
read -r -a EVALUATE_EXTRA <<< "${EVALUATE_ARGS:-}"

cd "$(dirname "$0")"
DATASET=dataset/$NAME
VIDEO=$DATASET/$NAME.mp4
CHECKPOINTS=checkpoint/$NAME

case $ASR in
    ave|hubert|wenet) ;;
    *) echo "error: unknown ASR '$ASR' — use ave, hubert or wenet" >&2; exit 2 ;;
esac
# One process per listed GPU: several GPUs train under torchrun (DistributedDataParallel).
TRAIN=("$PYTHON")
if [ "$GPU" = "cpu" ]; then
    DEVICE=cpu
else
    case $GPU in
        ''|,*|*,|*,,*|*[!0-9,]*) echo "error: GPU must be an index such as 0, a list such as 0,1 (or cpu), not '$GPU'" >&2; exit 2 ;;
    esac
    export CUDA_VISIBLE_DEVICES=$GPU
    DEVICE=cuda
    IFS=, read -r -a GPU_LIST <<< "$GPU"
    if [ "${#GPU_LIST[@]}" -gt 1 ]; then
        TRAIN=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "${#GPU_LIST[@]}")
    fi
fi
if [ ! -f "$VIDEO" ]; then
    echo "error: $VIDEO does not exist — put the recording there: mkdir -p $DATASET && cp your_video.mp4 $VIDEO" >&2
    exit 2
fi

echo "== [1/4] preprocessing $VIDEO ($ASR features; finished stages are skipped)"
"$PYTHON" data_utils/process.py --input_video "$VIDEO" --output_dir "$DATASET" --asr "$ASR" --device "$DEVICE"

echo "== [2/4] SyncNet -> $CHECKPOINTS/syncnet"
if [ -f "$CHECKPOINTS/syncnet/summary.json" ]; then
    echo "SyncNet already trained ($CHECKPOINTS/syncnet/summary.json): skipping"
else
    "${TRAIN[@]}" train_syncnet.py --name "$NAME" --asr "$ASR" --device "$DEVICE" --resume ${SYNCNET_EXTRA[@]+"${SYNCNET_EXTRA[@]}"}
fi

echo "== [3/4] U-Net -> $CHECKPOINTS"
if [ -f "$CHECKPOINTS/summary.json" ]; then
    echo "U-Net already trained ($CHECKPOINTS/summary.json): skipping"
else
    "${TRAIN[@]}" train_328.py --name "$NAME" --asr "$ASR" --device "$DEVICE" --use_syncnet --resume ${UNET_EXTRA[@]+"${UNET_EXTRA[@]}"}
fi

# The checkpoints are complete whatever this stage says, so its failure is a warning, not the run's.
echo "== [4/4] the newest epoch redraws the held-out tail -> $CHECKPOINTS/evaluation/heldout"
if ! "$PYTHON" evaluate_328.py --name "$NAME" --last 1 --device "$DEVICE" ${EVALUATE_EXTRA[@]+"${EVALUATE_EXTRA[@]}"}; then
    echo "warning: the held-out check failed (above); the checkpoints are complete — run it again: python evaluate_328.py --name $NAME --last 1" >&2
fi

echo "== done: checkpoints in $CHECKPOINTS (training.log, loss_curve.png); next: python inference_328.py --name $NAME --audio_path your.wav"
