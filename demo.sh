#!/usr/bin/env bash
# The whole path on the small clip bundled in the repository, on whatever this
# machine has (CPU works). Sets up .venv on first use.
#   bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh requirements.txt
python=.venv/bin/python
name=sample
mkdir -p "dataset/$name"
if [ ! -f "dataset/$name/$name.mp4" ]; then
    cp tests/data/talker_a_4s.mp4 "dataset/$name/$name.mp4"
fi
echo "== 1/1 preprocessing dataset/$name/$name.mp4"
"$python" data_utils/process.py --input_video "dataset/$name/$name.mp4" --output_dir "dataset/$name"
echo "done: frames in dataset/$name/full_body_img, landmarks in dataset/$name/landmarks,"
echo "      crop boxes in dataset/$name/crop_boxes.npy, report in dataset/$name/process_report.json"
