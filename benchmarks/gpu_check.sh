#!/usr/bin/env bash
# The GPU check in one command (under 9 minutes on one H100):
#   bash benchmarks/gpu_check.sh NAME [--heldout_audio A.wav --truth_video T.mp4]
#   bash benchmarks/gpu_check.sh NAME --smoke          # no GPU: the same parts on the CPU, tiny
# Uses the repository's .venv when there is one, else python3. Wheels in wheels/
# (for packages the GPU box lacks) are installed into /tmp/lipsync_site first and
# put on PYTHONPATH. mediapipe and the protobuf 4.25 and attrs it needs (wheels/landmarks/,
# scripts/download_wheels.py --with_landmarks) go into /tmp/lipsync_landmarks_site instead,
# which only the parts that measure landmarks get (LIPSYNC_LANDMARKS_SITE): on everyone's
# PYTHONPATH protobuf 4.25 breaks the box's onnx. The work is benchmarks/gpu_check.py; see its --help.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi

# The folders may be set from outside (the tests do); these are the defaults.
wheel_dir="${LIPSYNC_WHEELS:-$repo/wheels}"
site="${LIPSYNC_SITE:-/tmp/lipsync_site}"
given_landmarks_site="${LIPSYNC_LANDMARKS_SITE:-}"    # a site installed by hand, used as it is
landmarks_site="${given_landmarks_site:-/tmp/lipsync_landmarks_site}"
unset LIPSYNC_LANDMARKS_SITE      # set again below only where the site holds something
shopt -s nullglob
wheels=()
landmark_wheels=("$wheel_dir"/landmarks/*.whl)
for wheel in "$wheel_dir"/*.whl; do
    case "$(basename "$wheel")" in
        mediapipe-*|protobuf-*|attrs-*) landmark_wheels+=("$wheel") ;;   # an older flat wheels/
        *) wheels+=("$wheel") ;;
    esac
done
shopt -u nullglob

install_wheels() {   # FOLDER WHEEL...: 0 when pip installed them
    local target="$1"
    shift
    echo "installing $# wheel(s) into $target"
    "$python" -m pip install --quiet --no-index --no-deps --upgrade --target "$target" "$@"
}

if [ ${#wheels[@]} -gt 0 ]; then
    if ! install_wheels "$site" "${wheels[@]}"; then
        echo "warning: installing the wheels in $wheel_dir failed; the parts that need them will say so" >&2
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ${#landmark_wheels[@]} -gt 0 ]; then
    if install_wheels "$landmarks_site" "${landmark_wheels[@]}"; then
        export LIPSYNC_LANDMARKS_SITE="$landmarks_site"
    else
        echo "warning: installing the landmark wheels failed; LMD and the opening scores will be n/a" >&2
    fi
elif [ -n "$given_landmarks_site" ] && [ -d "$given_landmarks_site" ]; then
    export LIPSYNC_LANDMARKS_SITE="$given_landmarks_site"
fi

exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
