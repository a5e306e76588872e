#!/usr/bin/env python3
"""The PyTorch side of `gpu-edit`: ROME edits and a MEMIT batch with transformers' model classes,
of the same shapes, on the same prompts (the workload file `gpu-edit --workload` writes: its
context templates, requests and hyperparameters) and with the same step counts as kedit's run.
Written here for the comparison, in the way EasyEdit runs these methods: the whole model forward
each v* step, one request at a time for MEMIT's targets, MEMIT's solve in float64 on the device.
C = I on both sides (see gpu_edit.rs). Prints one JSON line.

Usage: gpu_edit_torch.py --workload W.json [--device cuda|cpu] [--gguf SmolLM2.gguf]
"""
import argparse
import json
import os
import re
import time

import torch
import transformers
from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# The shapes of kedit's `random:<shape>` (crates/models/src/random.rs).
LLAMA = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "llama-tiny": dict(vocab_size=320, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
# Each v* optimisation's positions (rows × the padded length), in the order they ran.
V_POSITIONS = []

GPTJ = {"gptj-6b": dict(vocab_size=50400, n_embd=4096, n_inner=16384, n_layer=28, n_head=16,
                        rotary_dim=64, n_positions=2048)}


def build(spec, device, gguf):
    if spec == "smollm2":
        tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=gguf)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(gguf), gguf_file=gguf, dtype=torch.float32).to(device)
        encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    else:
        shape = spec.split(":")[1]
        if shape in LLAMA:
            cfg = transformers.LlamaConfig(**LLAMA[shape], max_position_embeddings=4096,
                                           tie_word_embeddings=shape == "smollm2-135m")
        else:
            cfg = transformers.GPTJConfig(**GPTJ[shape])
        torch.manual_seed(0)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        t = Tokenizer.from_file(os.path.join(ROOT, "fixtures/tiny-llama/tokenizer.json"))
        encode = lambda s: t.encode(s, add_special_tokens=False).ids
    model.eval().requires_grad_(False)
    return model, encode


def matmul_params(model, from_layer=0):
    """The weights the products multiply in the blocks from `from_layer` up, and the output head:
    2 FLOP per position and weight forward, 2 more for the input gradient backward."""
    n = 0
    for name, p in model.named_parameters():
        m = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
        if m and int(m.group(1)) >= from_layer and p.dim() == 2:
            n += p.numel()
    return n + model.get_output_embeddings().weight.numel()


def mlp(model, layer):
    """(the MLP module, its output projection) of a block."""
    if hasattr(model, "model"):
        m = model.model.layers[layer].mlp
        return m, m.down_proj
    m = model.transformer.h[layer].mlp
    return m, m.fc_out


def pad(seqs, device):
    n = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), n, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, device=device)
        mask[i, : len(s)] = 1
    return ids, mask


def subject_last(encode, text, subject):
    return len(encode(text[: text.index(subject) + len(subject)])) - 1


def prompts(templates, req):
    full = req["prompt"].replace("{}", req["subject"])
    return [t.replace("{}", full) for t in templates]


def keys(model, encode, layer, templates, reqs, device):
    """Template-averaged MLP keys `[ff, n]` at each request's subject-last token (one batch)."""
    texts, pos, owner = [], [], []
    for r, req in enumerate(reqs):
        for p in prompts(templates, req):
            texts.append(encode(p))
            pos.append(subject_last(encode, p, req["subject"]))
            owner.append(r)
    ids, mask = pad(texts, device)
    got = {}
    _, proj = mlp(model, layer)
    h = proj.register_forward_pre_hook(lambda m, a: got.__setitem__("k", a[0]))
    model(input_ids=ids, attention_mask=mask)
    h.remove()
    k = got["k"][torch.arange(len(texts), device=device), torch.tensor(pos, device=device)]
    out = torch.zeros(len(reqs), k.shape[1], device=device)
    out.index_add_(0, torch.tensor(owner, device=device), k)
    return (out / len(templates)).T


def optimise_v(model, encode, layer, templates, req, h, steps, device):
    """ROME's v*: δ at the MLP output of `layer` at the subject's last token of every rewriting
    prompt, Adam on NLL(target) + KL on "{subject} is a" + weight decay, norm clamp; `steps`
    forward passes, the last without a backward (as EasyEdit's loop breaks before it)."""
    target = encode(" " + req["target_new"])
    texts, pos, labels = [], [], []
    for p in prompts(templates, req):
        ids = encode(p)
        pos.append((len(texts), subject_last(encode, p, req["subject"])))
        labels.append((len(texts), len(ids) - 1, target))
        texts.append(ids + target[:-1])
    kl = f"{req['subject']} is a"
    kl_ids = encode(kl)
    pos.append((len(texts), subject_last(encode, kl, req["subject"])))
    texts.append(kl_ids)
    ids, mask = pad(texts, device)
    V_POSITIONS.append(ids.numel())
    rows = torch.tensor([r for r, _ in pos], device=device)
    cols = torch.tensor([c for _, c in pos], device=device)
    module, _ = mlp(model, layer)
    d = model.config.hidden_size
    delta = torch.zeros(d, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=h["v_lr"])
    init = {}

    def hook(m, a, out):
        if "v0" not in init:
            init["v0"] = out[0, pos[0][1]].detach().clone()
        out = out.clone()
        out[rows, cols] = out[rows, cols] + delta
        return out

    handle = module.register_forward_hook(hook)
    lr_rows = torch.tensor([r for r, _, _ in labels for _ in target], device=device)
    lr_cols = torch.tensor([p + j for _, p, _ in labels for j in range(len(target))], device=device)
    lr_tok = torch.tensor([t for _, _, tg in labels for t in tg], device=device)
    kl_init = None
    for step in range(steps):
        opt.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[lr_rows, lr_cols], -1)
        nll = -logp.gather(1, lr_tok[:, None]).mean()
        kl_logp = torch.log_softmax(logits[len(texts) - 1, len(kl_ids) - 1], -1)
        if kl_init is None:
            kl_init = kl_logp.detach().clone()
        kl_term = h["kl_factor"] * torch.sum(kl_init.exp() * (kl_init - kl_logp))
        decay = h["v_weight_decay"] * delta.norm() / init["v0"].norm() ** 2
        loss = nll + kl_term + decay
        if step == steps - 1:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():
            limit = h["clamp_norm_factor"] * init["v0"].norm()
            if delta.norm() > limit:
                delta.mul_(limit / delta.norm())
    handle.remove()
    return init["v0"] + delta.detach()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gguf")
    ap.add_argument("--tf32", action="store_true",
                    help="let float32 matmuls run on TF32 tensor cores (PyTorch's default is off)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    w = json.load(open(a.workload))
    dev = a.device
    t = time.perf_counter()
    model, encode = build(w["model"], dev, a.gguf)
    sync(dev)
    load_s = time.perf_counter() - t
    templates = [t for group in w["templates"] for t in group]
    layer, rh, mh = w["layer"], w["rome"], w["memit"]
    reqs = w["requests"]

    times = []
    for req, steps in zip(reqs, rh["steps"]):
        _, proj = mlp(model, layer)
        saved = proj.weight.detach().clone()
        sync(dev)
        t = time.perf_counter()
        k = keys(model, encode, layer, templates, [req], dev)[:, 0]
        v = optimise_v(model, encode, layer, templates, req, rh, steps, dev)
        with torch.no_grad():
            right = (v - proj.weight @ k) / (k @ k)
            proj.weight += torch.outer(right, k)
        sync(dev)
        times.append(time.perf_counter() - t)
        with torch.no_grad():
            proj.weight.copy_(saved)

    memit = None
    if mh["batch"] > 0:
        batch = reqs[: mh["batch"]]
        layers = mh["layers"]
        templates = [t for group in mh["templates"] for t in group]
        saved = [mlp(model, l)[1].weight.detach().clone() for l in layers]
        sync(dev)
        t = time.perf_counter()
        zs = torch.stack([optimise_v(model, encode, layers[-1], templates, r, mh,
                                     mh["v_num_grad_steps"], dev) for r in batch], 1)
        for i, l in enumerate(layers):
            k = keys(model, encode, l, templates, batch, dev)
            cur = current_outputs(model, encode, layers[-1], templates, batch, dev)
            resid = (zs - cur) / (len(layers) - i)
            c = torch.eye(k.shape[0], dtype=torch.float64, device=dev)
            adj = torch.linalg.solve(mh["mom2_update_weight"] * c + k.double() @ k.double().T,
                                     k.double())
            with torch.no_grad():
                mlp(model, l)[1].weight += (resid.double() @ adj.T).float()
        sync(dev)
        memit = {"batch": len(batch), "layers": layers, "time_s": time.perf_counter() - t}
        memit["per_request_s"] = memit["time_s"] / len(batch)
        with torch.no_grad():
            for l, s in zip(layers, saved):
                mlp(model, l)[1].weight.copy_(s)

    # Each step runs the whole model forward on every position; all but the last also run the
    # blocks from the edit layer up backward (as kedit's `tflop` counts its own, attention left
    # out; the key's forward pass and the update are in the time, not in the count).
    p_all, p_above = matmul_params(model), matmul_params(model, layer)
    tflop = [(2 * n * p_all * st + 2 * n * p_above * (st - 1)) / 1e12
             for n, st in zip(V_POSITIONS, rh["steps"])]
    s = sorted(times)
    print(json.dumps({"benchmark": "gpu-edit", "side": "pytorch", "model": w["model"],
                      "device": dev, "torch": torch.__version__,
                      "matmul": "TF32" if a.tf32 and dev == "cuda" else "f32",
                      "card": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                      "load_s": load_s, "rome": {"layer": layer, "edits": len(times),
                      "times_s": times, "steps": rh["steps"], "median_s": s[len(s) // 2],
                      "positions": V_POSITIONS[: len(times)], "tflop": tflop,
                      "tflop_per_s": [f / t for f, t in zip(tflop, times)]},
                      "memit": memit}))


def current_outputs(model, encode, layer, templates, reqs, device):
    """The MLP output of `layer` at each request's subject-last token `[d, n]` (first template,
    the un-prefixed prompt, as MEMIT reads its current values)."""
    texts = [encode(prompts(templates[:1], r)[0]) for r in reqs]
    pos = [subject_last(encode, prompts(templates[:1], r)[0], r["subject"]) for r in reqs]
    ids, mask = pad(texts, device)
    got = {}
    module, _ = mlp(model, layer)
    h = module.register_forward_hook(lambda m, a, o: got.__setitem__("o", o))
    model(input_ids=ids, attention_mask=mask)
    h.remove()
    return got["o"][torch.arange(len(reqs), device=device), torch.tensor(pos, device=device)].T


if __name__ == "__main__":
    main()
