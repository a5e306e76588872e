#!/usr/bin/env bash
# Issue 10's GPU checks, on a GPU machine with no Rust toolchain (the `device` tool), from the
# repository root, with `gpu/` carried (made here by `cargo xtask gpu-pack`):
#   1. every test binary's burn-cuda instances and the cuda-only cross-backend tests;
#   2. the GPU benchmark (kedit and PyTorch, same run) on the models given.
# Results go to $OUT (tests.log, card.txt, gpu-edit.jsonl, table.md).
#
#   bash benchmarks/gpu_device.sh [MODELS]        MODELS default: random:llama2-7b
#
# SmolLM2's tests and benchmark need its GGUF in $KEDIT_HOME/models/ (98 MB: over what one call
# carries; send it in two parts to the same warm machine and join them there); without it those
# tests fail at the fetch, and the benchmark runs the 7B shape only.
set -uo pipefail
OUT=${OUT:-/tmp/kedit-gpu-out}
mkdir -p "$OUT"
# Burn's CUDA runtime (cudarc) loads the driver and CUDA 13 libraries at run time; never the
# toolkit's `stubs` folder (CUDA_ERROR_STUB_LIBRARY).
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
nvidia-smi -L | tee "$OUT/card.txt"
# gpu-pack compressed the binaries (xz); Python's lzma unpacks them whatever the image has.
python3 - <<'PY'
import glob, lzma, os
for f in glob.glob("gpu/*.xz") + glob.glob("gpu/tests/*.xz"):
    with lzma.open(f) as src, open(f[:-3], "wb") as dst:
        dst.write(src.read())
    os.chmod(f[:-3], 0o755)
    os.remove(f)
PY
# The test binaries find fixtures and the kedit binary through paths fixed when they were built
# (CARGO_MANIFEST_DIR, CARGO_BIN_EXE_kedit): make that checkout path point here.
built=$(strings gpu/tests/tiny_llama | grep -o '/[A-Za-z0-9_.+-][A-Za-z0-9_./+-]*/crates/models' | sort -u | head -1)
root=${built%/crates/models}
if [ -n "$root" ] && [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
fi
mkdir -p target/release && cp gpu/kedit target/release/kedit
status=0
for t in gpu/tests/*; do
    # `cuda` selects the burn-cuda instances (name::cuda) and the cuda-only tests' names.
    echo "== $t" | tee -a "$OUT/tests.log"
    "$t" cuda --test-threads 1 2>&1 | tee -a "$OUT/tests.log" || status=1
done
python3 benchmarks/gpu_bench.py --models "${1:-random:llama2-7b}" --backend cuda \
    --gpu-edit gpu/gpu-edit --results "$OUT/gpu-edit.jsonl" --readme /dev/null \
    ${KEDIT_GGUF:+--gguf "$KEDIT_GGUF"} | tee "$OUT/table.md" || status=1
exit $status
