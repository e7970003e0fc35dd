#!/usr/bin/env bash
# Builds the CUDA binaries that bench/gpu/run.sh runs, on a machine without a GPU or a CUDA
# install: CUDA 13.0's compiler, headers and libraries come from NVIDIA's Python wheels, unpacked
# into a cache folder, never into the system. candle links cuBLAS, cuRAND and NVRTC from those
# wheels; the driver library (libcuda.so.1) exists only where a GPU driver is installed, so the
# link uses a stub with its soname and the driver API symbols cudarc calls, and the GPU machine's
# own libcuda.so.1 is loaded at run time (the same role as the CUDA toolkit's lib/stubs).
# Kernels are built for CUDA_COMPUTE_CAP (default 90: H100/H200).
#
#   bench/gpu/build.sh OUT_DIR        then copy OUT_DIR to the GPU machine
#
# CUDA_WHEELS (default /tmp/mirrorsim-cuda13) is where the wheels are unpacked; CARGO_TARGET_DIR
# is honoured (a separate one keeps the CPU build's artefacts).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
wheels="${CUDA_WHEELS:-/tmp/mirrorsim-cuda13}"
toolkit="$wheels/nvidia/cu13"

if [[ ! -x "$toolkit/bin/nvcc" || ! -d "$toolkit/include/cccl" || ! -e "$toolkit/lib/libcublas.so" ]]; then
    echo "unpacking CUDA 13.0 wheels into $wheels" >&2
    mkdir -p "$wheels/download"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels/download" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
        "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*"
    for wheel in "$wheels"/download/*.whl; do
        python3 -m zipfile -e "$wheel" "$wheels"
    done
    chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/*
    for library in cudart cublas cublasLt curand nvrtc; do
        ln -sf "$(cd "$toolkit/lib" && ls "lib$library.so."* | head -n 1)" "$toolkit/lib/lib$library.so"
    done
fi

export CUDA_PATH="$toolkit" CUDA_HOME="$toolkit" PATH="$toolkit/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" LIBRARY_PATH="$toolkit/lib/stubs:$toolkit/lib"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
cd "$repo_root"
cargo build --release --features cuda -p mirrorsim-llm --lib
if [[ ! -e "$toolkit/lib/stubs/libcuda.so" ]]; then
    mkdir -p "$toolkit/lib/stubs"
    nm -u --format=posix "$target_dir"/release/deps/libcudarc-*.rlib | awk '{print $1}' \
        | grep -E '^cu[A-Z]' | sort -u | sed 's/.*/void &(void) {}/' > "$toolkit/lib/stubs/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib/stubs/libcuda.so" \
        "$toolkit/lib/stubs/cuda_stub.c"
fi
cargo build --release --features cuda -p mirrorsim
cargo build --release --features cuda -p mirrorsim-llm --example bench_prompts
cargo build --release --features cuda -p mirrorsim-train --example sft_step
test_binary=$(cargo test --release --features cuda -p mirrorsim-llm --test engine_smollm2 --no-run \
    --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "engine_smollm2" \
            and message.get("executable"):
        print(message["executable"])')
cp "$target_dir/release/mirrorsim" "$target_dir/release/examples/bench_prompts" \
    "$target_dir/release/examples/sft_step" "$out/"
cp "$test_binary" "$out/engine_smollm2"
cp -L "$toolkit/lib/libcudart.so.13" "$out/"
strip "$out/mirrorsim" "$out/bench_prompts" "$out/sft_step" "$out/engine_smollm2"
ls -la "$out" >&2
