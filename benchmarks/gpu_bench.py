#!/usr/bin/env python3
"""The GPU benchmark: for each model, kedit's `gpu-edit` (ROME edits, a MEMIT batch, the ROME
memory-bandwidth floor) and then `gpu_edit_torch.py` on the workload kedit wrote (same prompts,
shapes and step counts), in one run on one machine. Appends both JSON lines to
benchmarks/results/gpu-edit.jsonl and rewrites the table between the `gpu-edit` markers of
benchmarks/README.md, naming the card.

Usage (on the GPU machine, with a kedit built here: `cargo build --release -p kedit-benchmarks
--features cuda --bin gpu-edit`):
  python3 benchmarks/gpu_bench.py --models smollm2,random:llama2-7b --backend cuda \
      [--gguf SmolLM2.gguf] [--rome-edits 5] [--memit-batch 100] [--gpu-edit PATH]
On a CPU (to try the harness): --backend cpu --models random:llama-tiny
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
BEGIN, END = "<!-- gpu-edit table: begin -->", "<!-- gpu-edit table: end -->"


def run(cmd):
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    # stderr passes through: a GPU call's log is all there is when a side fails.
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def record(path, line):
    # Each side's line as soon as it exists: a call cut short keeps what finished.
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def rate(side):
    """The median edit's TFLOP/s (each side counts its own products' arithmetic), or – for lines
    from before the count."""
    r = side.get("tflop_per_s")
    return "{:.3g}".format(sorted(r)[len(r) // 2]) if r else "–"


def table(rows):
    lines = [
        "| model | device | kedit matmul | ROME s/edit kedit | v* steps | floor s | kedit ÷ floor "
        "| ROME s/edit PyTorch f32 | kedit ÷ PyTorch | PyTorch TF32 s/edit "
        "| TFLOP/s kedit | TFLOP/s PyTorch f32 "
        "| MEMIT 100: kedit s | PyTorch s | kedit ÷ PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, t, t32 in rows:
        kr, tr = k["rome"], t["rome"]
        tf32 = "{:.3f}".format(t32["rome"]["median_s"]) if t32 else "–"
        km, tm = k.get("memit") or {}, t.get("memit") or {}
        mem = ("| {:.2f} | {:.2f} | {:.2f} |".format(km["time_s"], tm["time_s"],
                                                   km["time_s"] / tm["time_s"])
               if km and tm else "| – | – | – |")
        lines.append(
            "| {} | {} | {} | {:.3f} | {} | {:.3f} | {:.1f} | {:.3f} | {:.2f} | {} | {} | {} {}"
            .format(k["model"], t["card"], k.get("matmul", "TF32"), kr["median_s"],
                    sorted(kr["steps"])[len(kr["steps"]) // 2], kr["floor_median_s"],
                    kr["ratio_to_floor"], tr["median_s"], kr["median_s"] / tr["median_s"], tf32,
                    rate(kr), rate(tr), mem))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,random:llama2-7b")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--gguf")
    ap.add_argument("--rome-edits", default="5")
    ap.add_argument("--memit-batch", default="100")
    ap.add_argument("--gpu-edit", default=os.path.join(ROOT, "target/release/gpu-edit"))
    ap.add_argument("--results", default=os.path.join(HERE, "results/gpu-edit.jsonl"))
    ap.add_argument("--readme", default=os.path.join(HERE, "README.md"))
    ap.add_argument("--torch-tf32", action="store_true",
                    help="also time the PyTorch side with TF32 matmuls (ROME only)")
    a = ap.parse_args()
    device = "cuda" if a.backend == "cuda" else "cpu"
    rows = []
    for model in a.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            w = os.path.join(tmp, "workload.json")
            k = run([a.gpu_edit, "--model", model, "--backend", a.backend, "--rome-edits",
                     a.rome_edits, "--memit-batch", a.memit_batch, "--workload", w])
            record(a.results, k)
            cmd = [sys.executable, os.path.join(HERE, "gpu_edit_torch.py"), "--workload", w,
                   "--device", device]
            if model == "smollm2":
                cmd += ["--gguf", a.gguf]
            t = run(cmd)
            record(a.results, t)
            t32 = None
            if a.torch_tf32 and device == "cuda":
                # ROME only: the same workload with MEMIT's batch left out.
                wl = json.load(open(w))
                wl["memit"]["batch"] = 0
                json.dump(wl, open(w, "w"))
                t32 = run(cmd + ["--tf32"])
                record(a.results, t32)
        rows.append((k, t, t32))
    md = table(rows)
    print(md)
    text = open(a.readme).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        open(a.readme, "w").write(head + BEGIN + "\n" + md + "\n" + END + tail)


if __name__ == "__main__":
    main()
