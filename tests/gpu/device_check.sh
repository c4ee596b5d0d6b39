#!/usr/bin/env bash
# The prepared GPU check of the fast DPO path (tests/gpu/device_check.py): one command, one JSON + markdown summary.
#
#   tests/gpu/device_check.sh [OUT_DIR] [device_check.py options, e.g. --smoke, --only timing/llava]
#
# OUT_DIR defaults to $OUT (the device machine's returned folder), else ./device_check_out. Needs PyTorch and
# transformers; whatever else is missing (trl, peft, datasets, deepspeed, bitsandbytes...) is installed offline
# from wheels carried in shared/wheels/ or tests/gpu/wheels/ if those folders hold any. halign itself is put on
# the path from this checkout when it is not installed. The whole run is capped at 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-device_check_out}}"
[ $# -gt 0 ] && shift
mkdir -p "$out"
for wheels in shared/wheels tests/gpu/wheels; do
  if compgen -G "$wheels/*.whl" > /dev/null; then
    # --no-index: the GPU machine has no network; a wheel that cannot install is logged, not fatal.
    python -m pip install --quiet --no-index --find-links "$wheels" "$wheels"/*.whl 2>&1 | tail -5 \
      | tee -a "$out/wheel_install.log"
  fi
done
if ! python -c "import halign.align" 2> /dev/null; then
  # The package maps halign.<folder> to the repository's top-level folders (pyproject.toml); mirror that.
  shim="$(mktemp -d)/halign_path"
  mkdir -p "$shim/halign"
  for folder in align rewards data_gen recipes; do
    [ -d "$folder" ] && ln -s "$PWD/$folder" "$shim/halign/$folder"
  done
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
timeout 480 python tests/gpu/device_check.py --out "$out" "$@"
status=$?
[ $status -eq 124 ] && echo "device_check: stopped at the 8-minute cap" | tee -a "$out/device_check.log"
exit $status
