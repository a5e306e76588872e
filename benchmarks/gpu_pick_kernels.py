"""From matmul-probe's JSON lines, the kernels worth an end-to-end ROME run: the fastest that
computes in f32 (relative error under 1e-5 against f64; cuBLAS's SGEMM among the candidates) and
the fastest TF32 one, by their summed time on the MLP's forward and backward products (two
thirds of a block's arithmetic).
Prints them comma-separated, for KEDIT_CUDA_KERNEL; exits 1 when the probe measured none.

Usage: python3 benchmarks/gpu_pick_kernels.py probe.jsonl
"""
import json
import sys

PRODUCTS = {"up x@W", "up g@Wᵀ"}


def main():
    times, errors = {}, {}
    for line in open(sys.argv[1]):
        r = json.loads(line)
        name = r["kernel"]
        # The probe's "cublas (f32 SGEMM)" row is KEDIT_CUDA_KERNEL=cublas.
        if name.startswith("cublas"):
            name = "cublas"
        # Only cubek's kernels and cuBLAS can be chosen; Burn's matmul and kedit's split are the
        # baselines.
        choosable = name.startswith("matmul_") or name == "cublas"
        if r["product"] not in PRODUCTS or r["ms"] is None or not choosable:
            continue
        times.setdefault(name, {})[r["product"]] = r["ms"]
        errors[name] = max(errors.get(name, 0.0), float(r["rel_error"]))
    full = {n: sum(t.values()) for n, t in times.items() if set(t) == PRODUCTS}
    picks = []
    for f32 in (True, False):
        c = [n for n in full if (errors[n] < 1e-5) == f32]
        if c:
            picks.append(min(c, key=full.get))
    if not picks:
        sys.exit(1)
    print(",".join(picks))


if __name__ == "__main__":
    main()
