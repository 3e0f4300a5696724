#!/usr/bin/env bash
# The GPU check in one command (under 9 minutes on one H100):
#   bash benchmarks/gpu_check.sh NAME [--heldout_audio A.wav --truth_video T.mp4]
#   bash benchmarks/gpu_check.sh NAME --smoke          # no GPU: the same parts on the CPU, tiny
# Uses the repository's .venv when there is one, else python3. Wheels in wheels/
# (for packages the GPU box lacks) are installed into /tmp/lipsync_site first and
# put on PYTHONPATH. The work is benchmarks/gpu_check.py; see its --help.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi

site=/tmp/lipsync_site
shopt -s nullglob
wheels=("$repo"/wheels/*.whl)
shopt -u nullglob
if [ ${#wheels[@]} -gt 0 ]; then
    echo "installing ${#wheels[@]} wheel(s) from $repo/wheels into $site"
    if ! "$python" -m pip install --quiet --no-index --no-deps --upgrade --target "$site" "${wheels[@]}"; then
        echo "warning: installing the wheels failed; the parts that need them will say so" >&2
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
