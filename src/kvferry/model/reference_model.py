#!/usr/bin/python3
"""Independent reference for model_reference_test: a plain eager PyTorch forward pass of
Qwen2ForCausalLM / LlamaForCausalLM / Qwen3ForCausalLM written from the Hugging Face modeling
code's semantics (no transformers library, no KV cache: every step recomputes the whole
sequence in float32).

Usage: reference_model.py MANIFEST.json
The manifest is {"out_dir": DIR, "cases": [{"key": K, "model_dir": D, "tokens": [...],
"greedy_steps": N, "variant": "normal" | "rope_interleaved" | "gqa_modulo"}]}.
For each case it writes DIR/K.bin (float32 logits of every prompt position, [n][vocab]) and
adds {"greedy": [...], "margins": [...]} to DIR/results.json: the greedy continuation and, for
each generated token, the top-1 minus top-2 logit margin at that step.
The variants deliberately break RoPE (GPT-J interleaved pairs instead of rotate_half) or the
GQA head mapping (query head h reads kv head h % n_kv instead of h // group), so the test can
check that its models are sensitive to both.
"""
import json
import math
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = bytearray(data[base + b:base + e])
        ten = torch.frombuffer(raw, dtype=DTYPES[t["dtype"]]) if e > b else torch.zeros(0)
        out[name] = ten.reshape(t["shape"]).float()
    return out


def rope_inv_freq(cfg, head_dim):
    base = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    attn = 1.0
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_wl, high_wl = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, inv_l)
    elif kind == "yarn":
        factor = rs["factor"]
        orig = rs.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        attn = rs.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
        beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

        def corr_dim(rot):
            return (head_dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), head_dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        extrap_factor = 1 - ramp
        pos_freqs = base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        inv = (1.0 / (factor * pos_freqs)) * (1 - extrap_factor) + (1.0 / pos_freqs) * extrap_factor
    elif kind != "default":
        raise ValueError("unsupported rope_scaling " + kind)
    return inv, attn


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x, cos, sin, variant):
    # x: [heads, n, d]; cos/sin: [n, d/2]
    if variant == "rope_interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
        return out
    c = torch.cat((cos, cos), dim=-1)
    s = torch.cat((sin, sin), dim=-1)
    return x * c + rotate_half(x) * s


class Model:
    def __init__(self, model_dir):
        with open(model_dir + "/config.json") as f:
            self.cfg = json.load(f)
        self.w = load_safetensors(model_dir + "/model.safetensors")
        c = self.cfg
        self.arch = c["architectures"][0]
        self.H = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads", self.nh)
        self.hd = c.get("head_dim") or self.H // self.nh
        self.L = c["num_hidden_layers"]
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.inv_freq, self.attn_factor = rope_inv_freq(c, self.hd)
        tied = c.get("tie_word_embeddings", False)
        self.lm_head = self.w["model.embed_tokens.weight"] if tied else self.w["lm_head.weight"]

    def linear(self, x, name, bias):
        y = x @ self.w[name + ".weight"].T
        if bias:
            y = y + self.w[name + ".bias"]
        return y

    def forward(self, tokens, variant="normal"):
        n = len(tokens)
        x = self.w["model.embed_tokens.weight"][torch.tensor(tokens)]
        pos = torch.arange(n, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        cos, sin = freqs.cos() * self.attn_factor, freqs.sin() * self.attn_factor
        qwen2 = self.arch == "Qwen2ForCausalLM"
        qwen3 = self.arch == "Qwen3ForCausalLM"
        attn_bias = self.cfg.get("attention_bias", False)
        mask = torch.full((n, n), float("-inf")).triu(1)
        group = self.nh // self.nkv
        for l in range(self.L):
            p = "model.layers.%d." % l
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], self.eps)
            q = self.linear(h, p + "self_attn.q_proj", qwen2 or attn_bias)
            k = self.linear(h, p + "self_attn.k_proj", qwen2 or attn_bias)
            v = self.linear(h, p + "self_attn.v_proj", qwen2 or attn_bias)
            q = q.view(n, self.nh, self.hd).transpose(0, 1)
            k = k.view(n, self.nkv, self.hd).transpose(0, 1)
            v = v.view(n, self.nkv, self.hd).transpose(0, 1)
            if qwen3:
                q = rms_norm(q, self.w[p + "self_attn.q_norm.weight"], self.eps)
                k = rms_norm(k, self.w[p + "self_attn.k_norm.weight"], self.eps)
            q = apply_rope(q, cos, sin, variant)
            k = apply_rope(k, cos, sin, variant)
            if variant == "gqa_modulo":
                idx = torch.tensor([h % self.nkv for h in range(self.nh)])
            else:
                idx = torch.tensor([h // group for h in range(self.nh)])
            k, v = k[idx], v[idx]
            scores = q @ k.transpose(1, 2) / math.sqrt(self.hd) + mask
            a = torch.softmax(scores.float(), dim=-1) @ v
            a = a.transpose(0, 1).reshape(n, self.nh * self.hd)
            x = x + self.linear(a, p + "self_attn.o_proj", (not qwen2) and attn_bias)
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], self.eps)
            g = self.linear(h, p + "mlp.gate_proj", False)
            u = self.linear(h, p + "mlp.up_proj", False)
            x = x + self.linear(torch.nn.functional.silu(g) * u, p + "mlp.down_proj", False)
        x = rms_norm(x, self.w["model.norm.weight"], self.eps)
        return x @ self.lm_head.T


def main():
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    out_dir = manifest["out_dir"]
    models = {}
    results = {}
    for case in manifest["cases"]:
        d = case["model_dir"]
        if d not in models:
            models[d] = Model(d)
        m = models[d]
        variant = case.get("variant", "normal")
        tokens = list(case["tokens"])
        logits = m.forward(tokens, variant)
        with open(out_dir + "/" + case["key"] + ".bin", "wb") as f:
            f.write(logits.contiguous().numpy().astype("<f4").tobytes())
        greedy, margins = [], []
        last = logits[-1]
        for _ in range(case.get("greedy_steps", 0)):
            top = torch.topk(last, 2)
            greedy.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            tokens.append(greedy[-1])
            last = m.forward(tokens, variant)[-1]
        results[case["key"]] = {"greedy": greedy, "margins": margins}
    with open(out_dir + "/results.json", "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
