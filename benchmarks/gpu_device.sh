#!/usr/bin/env bash
# Issue 10's GPU checks, on a GPU machine with no Rust toolchain and no network (the `device`
# tool), from the repository root. `cargo xtask gpu-pack` made gpu/1, gpu/2, … here, one per call
# (a call carries 64 MiB with the working tree). Each call carries its part and runs this script,
# which first moves whatever part arrived into $STAGE (kept while the machine stays warm, 30 s
# between calls), unpacks what is complete, then runs the phases named:
#
#   tests-tiny     every cuda test that needs no SmolLM2 (tiny checkpoints, random models, CLI)
#   bench-7b       gpu_bench.py on random:llama2-7b (ROME; MEMIT batch $MEMIT_7B, default 0)
#                  ($ROME_EDITS edits per model, default 3)
#   tests-smollm2  the SmolLM2 cuda tests (GGUF parts all staged)
#   bench-smollm2  gpu_bench.py on SmolLM2 (ROME and a MEMIT batch of 100)
#   probe          matmul-probe: every cubek kernel on the 7B step's products (PROBE_S seconds,
#                  default 150; PROBE_ONLY=a,b keeps the rows whose names contain a or b)
#                  -> probe.jsonl, probe.md
#   kernels-7b     kedit's ROME on random:llama2-7b with KEDIT_CUDA_KERNEL set to each kernel in
#                  $KERNELS (comma-separated), or else the probe's fastest f32 kernel and its
#                  fastest TF32 one on the MLP products -> gpu-edit.jsonl
#
# gpu/1 holds gpu-edit and matmul-probe (bench-7b, probe, kernels-7b) and the first cut of the
# test binaries; gpu/2 completes the tests (tests-tiny); the last part completes SmolLM2
# (tests-smollm2, bench-smollm2). `cargo xtask gpu-pack` prints which part completes which. With
# no phase named, the script only stages. The plan: benchmarks/README.md, "GPU".
#
# Logs and results go to $OUT: card.txt, tests-*.log, gpu-edit.jsonl, table-*.md.
#
# Every packed binary is built with cubek's kernels: KEDIT_CUDA_KERNEL=<name> in the environment
# runs the tests, the CLI and kedit's side of the benchmarks through that kernel (card.txt says
# which), e.g. KEDIT_CUDA_KERNEL=matmul_simple_tma_mma bash benchmarks/gpu_device.sh tests-tiny;
# KEDIT_CUDA_KERNEL=cublas runs them through cuBLAS's f32 SGEMM (crates/models/src/cublas.rs).
#
# DEADLINE (seconds from the script's start, default 540) stops a call's phases in time for its
# `timeout_s`: each test binary gets at most what is left (and TEST_TIMEOUT), a phase that cannot
# start in time is skipped and said so, so the logs always come back.
set -uo pipefail
OUT=${OUT:-/tmp/kedit-gpu-out}
STAGE=${STAGE:-/tmp/kedit-gpu}
mkdir -p "$OUT" "$STAGE"
# Burn's CUDA runtime (cudarc) loads the driver and CUDA 13 libraries at run time; never the
# toolkit's `stubs` folder (CUDA_ERROR_STUB_LIBRARY).
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}
# KEDIT_CUDA_KERNEL=cublas loads libcublas: the toolkit's (above) if it has one, else the one
# PyTorch's wheel carries (nvidia/*/lib), searched last.
for d in $(python3 -c 'import glob, nvidia; print(" ".join(p for r in nvidia.__path__ for p in glob.glob(r + "/*/lib")))' 2>/dev/null); do
    LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$d
done
ls /usr/local/cuda-13.0/targets/x86_64-linux/lib/libcublas.so* 2>/dev/null | head -3 > "$OUT/cublas.txt"
export KEDIT_HOME=$STAGE/home PYTHONUNBUFFERED=1
GGUF=$KEDIT_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf
DEADLINE=${DEADLINE:-540}
left() { echo $((DEADLINE - SECONDS)); }
nvidia-smi -L | tee "$OUT/card.txt"
echo "KEDIT_CUDA_KERNEL=${KEDIT_CUDA_KERNEL:-} (empty: Burn's matmul)" | tee -a "$OUT/card.txt"

for part in gpu/[0-9]*; do
    [ -d "$part" ] && cp -r "$part"/. "$STAGE"/ && rm -rf "$part"
done
ls -l "$STAGE" | tee -a "$OUT/stage.txt"
# gpu/1/manifest: each archive, how many chunks make it, and its SHA-256. An archive is joined,
# checked and unpacked once all its chunks are staged (by tar, else by Python's tarfile, which
# reads xz whatever the image's tar has), then its chunks are removed and a marker says it is done.
# `cargo test -p xtask` runs this staging on a small pack.
if [ -f "$STAGE/manifest" ]; then
    while read -r name n sum; do
        [ -e "$STAGE/$name.done" ] && continue
        chunks=("$STAGE/$name".[0-9][0-9])
        [ -f "${chunks[0]}" ] || chunks=()
        if [ "${#chunks[@]}" -ne "$n" ]; then
            echo "$name: ${#chunks[@]} of $n chunks staged so far (carry the next part)"
            continue
        fi
        cat "${chunks[@]}" > "$STAGE/$name"
        if ! echo "$sum  $STAGE/$name" | sha256sum -c --quiet; then
            echo "$name: the joined chunks do not match the manifest's SHA-256" >&2
            rm "$STAGE/$name"
            continue
        fi
        { tar xf "$STAGE/$name" -C "$STAGE" 2>/dev/null \
            || python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STAGE/$name" "$STAGE"; } \
            && rm "$STAGE/$name" "${chunks[@]}" && touch "$STAGE/$name.done" && echo "$name: unpacked"
    done < "$STAGE/manifest"
fi
have_smollm2() { [ -f "$GGUF" ]; }
# Each archive may arrive a call after another (gpu-pack says which part completes which).
have_bench() { [ -x "$STAGE/bin/gpu-edit" ] || { echo "$1: not run, bench.tar.xz is not all staged yet" >&2; status=1; false; }; }
have_tests() { [ -d "$STAGE/tests" ] || { echo "$1: not run, tests.tar.xz is not all staged yet" >&2; status=1; false; }; }
if [ "$#" -eq 0 ]; then
    echo "no phase named: staged only"
    exit 0
fi
if [ ! -d "$STAGE/tests" ] && [ ! -d "$STAGE/bin" ]; then
    echo "$STAGE: no binaries (gpu/1 was not carried to this machine, or it was given back between calls)" >&2
    exit 2
fi

# The binaries find fixtures, data and the kedit binary through paths fixed when they were built
# (CARGO_MANIFEST_DIR, CARGO_BIN_EXE_kedit): make that checkout path point here.
for b in tests/models bin/gpu-edit; do
    [ -f "$STAGE/$b" ] || continue
    built=$(strings "$STAGE/$b" | grep -o '/[A-Za-z0-9_.+-][A-Za-z0-9_./+-]*/\(crates/models\|benchmarks/\.\./fixtures\)' | sort -u | head -1)
    root=${built%/crates/models}
    root=${root%/benchmarks/../fixtures}
    if [ -n "$root" ] && [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
        mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
    fi
    break
done
if [ -f "$STAGE/bin/kedit" ]; then
    mkdir -p target/release && cp "$STAGE/bin/kedit" target/release/kedit
fi
# Every process (each test binary, each kedit the CLI tests start) would compile the same kernels
# again through NVRTC: CubeCL's PTX cache, kept under target/ while the machine stays warm, lets
# them share the compiled kernels. CubeCL reads cubecl.toml from the working directory up.
[ -f cubecl.toml ] || printf '[compilation]\ncache = "target"\n' > cubecl.toml

status=0
tests() { # $1: the phase, tiny or smollm2; the rest: test binaries
    local phase=$1 log=$OUT/tests-$1.log
    shift
    for t in "$@"; do
        echo "== $t" | tee -a "$log"
        local t0=$SECONDS budget=$(($(left) - 15))
        [ "$budget" -gt "${TEST_TIMEOUT:-240}" ] && budget=${TEST_TIMEOUT:-240}
        if [ "$budget" -lt 10 ]; then
            echo "== $t: not run, the call's DEADLINE is near" | tee -a "$log"
            status=1
            continue
        fi
        # The tests whose names say `cuda` (the burn-cuda instances, name::cuda, and the
        # cuda-only tests); those of the `smollm2` modules (the real model) in their own phase.
        local names
        names=$("$STAGE/tests/$t" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep cuda |
            if [ "$phase" = smollm2 ]; then grep '^smollm2::'; else grep -v '^smollm2::'; fi)
        if [ -z "$names" ]; then
            echo "== $t: no $phase cuda tests" | tee -a "$log"
            continue
        fi
        # One hung kernel must not take the call's other binaries with it.
        # shellcheck disable=SC2086 # one name per word
        timeout "$budget" "$STAGE/tests/$t" --exact $names --test-threads 1 2>&1 | tee -a "$log" || status=1
        echo "== $t: $((SECONDS - t0)) s" | tee -a "$log"
    done
}
bench() { # $1: model; $2: MEMIT batch
    python3 benchmarks/gpu_bench.py --models "$1" --backend cuda --memit-batch "$2" \
        --rome-edits "${ROME_EDITS:-3}" \
        --gpu-edit "$STAGE/bin/gpu-edit" --results "$OUT/gpu-edit.jsonl" --readme /dev/null \
        --gguf "$GGUF" --torch-tf32 \
        2> >(tee -a "$OUT/bench.log" >&2) | tee "$OUT/table-${1//[:]/-}.md" || status=1
}
# The binaries with SmolLM2 tests (modules `smollm2::`).
smollm2_tests=(models locate_edit)
# The model substrate first, the CLI (many processes) last: what a short call reaches is the core.
tiny_first=(models patch locate_edit gradient_edit_tiny kn_tiny)
for phase in "$@"; do
    echo "=== $phase ($(date -u +%T))"
    case $phase in
    tests-tiny)
        have_tests tests-tiny || continue
        tiny=()
        for t in "${tiny_first[@]}"; do [ -f "$STAGE/tests/$t" ] && tiny+=("$t"); done
        for t in "$STAGE"/tests/*; do
            case " ${tiny_first[*]} " in *" ${t##*/} "*) ;; *) tiny+=("${t##*/}") ;; esac
        done
        tests tiny "${tiny[@]}" ;;
    tests-smollm2)
        have_smollm2 || { echo "SmolLM2 is not staged yet" >&2; status=1; continue; }
        have_tests tests-smollm2 || continue
        tests smollm2 "${smollm2_tests[@]}" ;;
    bench-7b)
        have_bench bench-7b || continue
        [ "$(left)" -gt 60 ] || { echo "bench-7b: not run, the call's DEADLINE is near"; status=1; continue; }
        bench random:llama2-7b "${MEMIT_7B:-0}" ;;
    bench-smollm2)
        have_smollm2 || { echo "SmolLM2 is not staged yet" >&2; status=1; continue; }
        have_bench bench-smollm2 || continue
        if ! python3 -c "import gguf" 2>/dev/null; then
            python3 -m pip install -q --no-index --no-deps --target "$STAGE/site" "$STAGE"/whl/*.whl
            export PYTHONPATH=$STAGE/site
        fi
        [ "$(left)" -gt 60 ] || { echo "bench-smollm2: not run, the call's DEADLINE is near"; status=1; continue; }
        bench smollm2 "${MEMIT_SMOLLM2:-100}" ;;
    probe)
        have_bench probe || continue
        p=${PROBE_S:-150}
        [ "$(left)" -gt $((p + 30)) ] || p=$(($(left) - 30))
        [ "$p" -gt 20 ] || { echo "probe: not run, the call's DEADLINE is near"; status=1; continue; }
        timeout $((p + 20)) "$STAGE/bin/matmul-probe" --deadline "$p" ${PROBE_ONLY:+--only "$PROBE_ONLY"} \
            > "$OUT/probe.jsonl" 2> >(tee "$OUT/probe.md" >&2) || status=1 ;;
    kernels-7b)
        have_bench kernels-7b || continue
        kernels=${KERNELS:-}
        if [ -z "$kernels" ] && [ -s "$OUT/probe.jsonl" ]; then
            kernels=$(python3 benchmarks/gpu_pick_kernels.py "$OUT/probe.jsonl") || status=1
        fi
        [ -n "$kernels" ] || { echo "kernels-7b: no kernels (set KERNELS, or run probe in this call)"; status=1; continue; }
        IFS=, read -ra ks <<< "$kernels"
        for k in "${ks[@]}"; do
            [ "$(left)" -gt 90 ] || { echo "kernels-7b: $k not run, the call's DEADLINE is near"; status=1; continue; }
            echo "== KEDIT_CUDA_KERNEL=$k" | tee -a "$OUT/bench.log"
            KEDIT_CUDA_KERNEL=$k timeout $(($(left) - 10)) "$STAGE/bin/gpu-edit" --model random:llama2-7b \
                --backend cuda --rome-edits "${ROME_EDITS:-2}" --memit-batch 0 \
                2>> "$OUT/bench.log" | tee -a "$OUT/gpu-edit.jsonl" || status=1
        done ;;
    *) echo "unknown phase $phase (tests-tiny, bench-7b, tests-smollm2, bench-smollm2, probe, kernels-7b)" >&2; status=2 ;;
    esac
done
echo "=== done ($(date -u +%T)), status $status"
exit $status
