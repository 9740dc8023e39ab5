#!/usr/bin/env bash
# The CUDA path's check on a machine with an NVIDIA GPU, in one go (under 6 minutes on an
# H100/H200 with 16 cores): the GPU parity tests (kernel against the CPU path and against the
# kernels' Rust emulation), the Gram kernel's TFLOP/s and GB/s at B = 4,096, D = 1,024, and
# videos/s of the device against the CPU, batched and end to end over files, in one run.
#
#   scripts/gpu-check.sh             on the GPU machine; builds with cargo when it has one,
#                                    else runs what --prepare left in gpu-bin/
#   scripts/gpu-check.sh --prepare   here: builds gpu-bin/ (release binary + the library's test
#                                    binary, stripped) to carry to a machine without Rust
set -euo pipefail
cd "$(dirname "$0")/.."
bin=gpu-bin

if [ "${1:-}" = --prepare ]; then
  mkdir -p "$bin"
  cargo build --release --locked
  tests=$(cargo test --release --locked --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
  cp target/release/momentminer "$bin/momentminer"
  cp "$tests" "$bin/unit-tests"
  strip "$bin/momentminer" "$bin/unit-tests"
  # The shared libraries they link beyond the C library's own (HDF5 and what it pulls in),
  # since the GPU machine's image need not have them.
  mkdir -p "$bin/lib"
  ldd "$bin/momentminer" "$bin/unit-tests" | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
    xargs -I{} cp -L {} "$bin/lib/"
  du -sh "$bin" "$bin/lib"
  exit 0
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nproc

# NVRTC: the wheel scripts/setup.sh unpacks when it is here, else the machine's toolkit. cudarc
# looks for libnvrtc.so first, so a toolkit that has only libnvrtc.so.N gets that name linked.
nvrtc_set=()
if [ -e .cache/nvrtc/libnvrtc.so.12 ]; then
  nvrtc_set=(--set "compute.nvrtc_library=$PWD/.cache/nvrtc/libnvrtc.so.12")
else
  found=$(ls /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda-*/lib64/libnvrtc.so* \
    /usr/lib/x86_64-linux-gnu/libnvrtc.so* 2>/dev/null | grep -v builtins | head -n 1 || true)
  if [ -n "$found" ]; then
    mkdir -p /tmp/nvrtc-link
    ln -sf "$found" /tmp/nvrtc-link/libnvrtc.so
    export LD_LIBRARY_PATH="/tmp/nvrtc-link:$(dirname "$found"):${LD_LIBRARY_PATH:-}"
  fi
fi
echo "NVRTC: ${nvrtc_set[*]:-${found:-not found}}"

if command -v cargo >/dev/null; then
  echo "== build (release)"
  cargo build --release --locked
  mm=target/release/momentminer
  unit=(cargo test --release --locked --lib)
else
  mm=$bin/momentminer
  unit=("$bin/unit-tests")
  export LD_LIBRARY_PATH="$PWD/$bin/lib:${LD_LIBRARY_PATH:-}"
fi

echo "== GPU parity tests"
"${unit[@]}" compute:: -- --nocapture --test-threads 1

echo "== Gram kernel and batched similarity + events"
"$mm" "${nvrtc_set[@]}" --device cuda --set compute.batch_size=1024 kernels --arch compute_90 --bench

echo "== end to end over files (2,000 Charades-like videos, 90 × 1,024; proposals, no captions)"
for device in cpu cuda; do
  echo "-- $device"
  "$mm" "${nvrtc_set[@]}" --device "$device" --set compute.batch_size=1024 --set caption.mode=off bench \
    --videos 2000 --frames-min 90 --frames-max 90 --dim 1024 --repeats 1 --dir "/tmp/mm-bench-$device" 2>&1 |
    grep -viE "^\s*$|INFO"
done
