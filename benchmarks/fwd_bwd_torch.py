"""PyTorch side of the fwd-bwd benchmark: the same step as benchmarks/src/fwd_bwd.rs, on the same
GGUF loaded by transformers. Usage: fwd_bwd_torch.py GGUF THREADS REPEATS. Prints one JSON line."""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
spec = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.json")))
d, name = os.path.split(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
for p in model.parameters():
    p.requires_grad_(False)
layer = spec["layer"]
target = tok(spec["target"], add_special_tokens=False).input_ids
seqs, last, pos, tgt = [], [], [], []
for i, p in enumerate(spec["prompts"]):
    ids = tok(p, add_special_tokens=False).input_ids
    last.append(len(ids) - 1)
    for j, t in enumerate(target):
        pos.append((i, len(ids) - 1 + j))
        tgt.append(t)
    seqs.append(ids + target)
L = max(map(len, seqs))
ids = torch.tensor([s + [tok.eos_token_id] * (L - len(s)) for s in seqs])
rows = torch.tensor([p[0] for p in pos])
cols = torch.tensor([p[1] for p in pos])
tgt = torch.tensor(tgt)
state = {}


def add_delta(module, inputs, output):
    out = output.clone()
    out[torch.arange(len(last)), torch.tensor(last)] += state["delta"]
    return out


model.model.layers[layer].mlp.register_forward_hook(add_delta)


def step():
    state["delta"] = torch.zeros(model.config.hidden_size, requires_grad=True)
    hidden = model.model(input_ids=ids).last_hidden_state
    logits = model.lm_head(hidden[rows, cols])
    loss = -torch.log_softmax(logits, -1)[torch.arange(len(tgt)), tgt].mean()
    loss.backward()
    return state["delta"].grad.abs().sum().item()


step()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    g = step()
    times.append(time.perf_counter() - t)
    assert g > 0
times.sort()
print(json.dumps({"framework": f"pytorch {torch.__version__}", "threads": threads, "tokens": sum(map(len, seqs)),
                  "results": {"full": {"median_s": times[len(times) // 2], "times_s": times}}}))
