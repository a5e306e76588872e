"""Why 3xTF32 reached only 1.9e-5-5.2e-5 relative error on the H200 (matmul-probe, 2026-12-04),
where its arithmetic bounds it near 1e-6: an emulation on the CPU of a TF32 tensor-core product
whose f32 accumulator is rounded toward zero after each MMA (k = 8 per instruction), as NVIDIA's
tensor cores are reported to do, against the same product rounded to nearest.

If the accumulation is the cause, the emulated 3xTF32 error under round-toward-zero matches the
probe's in size and grows with K as it does (x2.7 from K = 4096 to 11008), and summing the main
product `hi_a @ hi_b` over chunks of K outside the kernel (matmul-probe's "split, main in K-chunks
of ..." rows) brings it down by about K / chunk. Prints one line per case; needs numpy.

Usage: python3 benchmarks/tf32_accumulation.py
"""
import numpy as np

MMA_K = 8


def tf32_split(x):
    # Veltkamp's split by 2^13 + 1, in f32 as layers::tf32_split does it: exact, hi in TF32.
    x = x.astype(np.float32)
    c = (x * np.float32(8193)).astype(np.float32)
    hi = (c - (c - x)).astype(np.float32)
    return hi, (x - hi).astype(np.float32)


def to_tf32(x):
    # The tensor core reads the top 10 mantissa bits.
    return (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def toward_zero(x64):
    f = x64.astype(np.float32)
    over = np.abs(f.astype(np.float64)) > np.abs(x64)
    f[over] = np.nextafter(f[over], np.float32(0))
    return f


def product(a, b, rounding):
    """a @ b through emulated TF32 MMAs: each adds an exact k = 8 partial sum to an f32
    accumulator, rounded to nearest ("rn") or toward zero ("rz")."""
    a, b = to_tf32(a).astype(np.float64), to_tf32(b).astype(np.float64)
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k0 in range(0, a.shape[1], MMA_K):
        x = acc.astype(np.float64) + a[:, k0:k0 + MMA_K] @ b[k0:k0 + MMA_K]
        acc = toward_zero(x) if rounding == "rz" else x.astype(np.float32)
    return acc


def split3(a, b, rounding, chunk=None):
    (ah, al), (bh, bl) = tf32_split(a), tf32_split(b)
    k = a.shape[1]
    chunk = chunk or k
    main = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k0 in range(0, k, chunk):
        main = (main + product(ah[:, k0:k0 + chunk], bh[k0:k0 + chunk], rounding)).astype(np.float32)
    return main.astype(np.float64) + product(ah, bl, rounding) + product(al, bh, rounding)


def main():
    rng = np.random.default_rng(0)
    for k in (4096, 11008):
        # The probe's operands: uniform in [-1, 1), its first rows against f64.
        x = rng.uniform(-1, 1, (4, k)).astype(np.float32)
        w = rng.uniform(-1, 1, (k, 1024)).astype(np.float32)
        ref = x.astype(np.float64) @ w.astype(np.float64)

        def err(y):
            return np.sqrt(((y - ref) ** 2).sum() / (ref ** 2).sum())

        for rounding in ("rn", "rz"):
            print(f"K={k} accumulator {rounding}: 3xTF32 {err(split3(x, w, rounding)):.2e}, "
                  f"one TF32 product {err(product(x, w, rounding)):.2e}")
        for chunk in (256, 1024):
            print(f"K={k} accumulator rz, main product in K-chunks of {chunk}: "
                  f"3xTF32 {err(split3(x, w, 'rz', chunk)):.2e}")


if __name__ == "__main__":
    main()
