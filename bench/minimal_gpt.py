"""A minimal GPT in plain PyTorch (nanoGPT-style), the leanest reference for `lifecycle bench pretrain`.

The same architecture families as lifecycle/model.py builds with Hugging Face transformers, with the
same parameters, so tokens/s compare like for like:
- llama: RMSNorm, rotary positions (the rotate-half convention), SwiGLU MLP, no biases;
- gpt2: LayerNorm, learned positions, GELU (tanh) MLP, biases;
both with pre-norm blocks, a final norm, tied (or untied) token embeddings and LM head, and attention by
`F.scaled_dot_product_attention(is_causal=True)`. What is leaner than the Hugging Face models: one
fused QKV projection (nanoGPT), rotary tables computed once at construction, a fused RMSNorm kernel
(`nn.RMSNorm`), no attention-mask construction, no output objects, no keyword plumbing.
`load_hf_weights` copies a Hugging Face model's weights in, which makes the two compute the same
function (tests/unit/test_bench_minimal_gpt.py).

Self-contained (torch only), so it runs on its own too: a bare AdamW loop on random tokens, one JSON line.

    python bench/minimal_gpt.py --layers 4 --heads 4 --dim 128 --context 64 --batch 12 --steps 30
    model = MinimalGPT(GPTConfig(vocab_size=2048, context=64, n_layer=4, n_head=4, n_kv_head=4,
                                 d_model=128, d_ff=344))
    logits = model(idx)  # idx: (B, T) token ids -> (B, T, vocab)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int
    context: int  # positions (rotary table or learned position embeddings)
    n_layer: int
    n_head: int
    n_kv_head: int  # llama only: < n_head is grouped-query attention
    d_model: int
    d_ff: int
    arch: str = "llama"  # llama | gpt2
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def rotary_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair."""  # each (context, head_dim / 2)
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.context, dtype=torch.float), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first half of each head against its second half (Hugging Face's rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)  # x: (B, T, H, hd); cos, sin: (T, 1, hd / 2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_kv = cfg.n_kv_head if cfg.arch == "llama" else cfg.n_head
        bias = cfg.arch == "gpt2"
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * n_kv) * cfg.head_dim, bias=bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)
        self.split = (cfg.n_head * cfg.head_dim, n_kv * cfg.head_dim, n_kv * cfg.head_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, d)
        hd = self.cfg.head_dim
        q, k, v = (t.view(B, T, -1, hd) for t in self.qkv(x).split(self.split, dim=-1))  # (B, T, heads, hd)
        if rope is not None:
            cos, sin = (t[:T, None, :] for t in rope)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=k.shape[2] != q.shape[2])  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.llama = cfg.arch == "llama"
        if self.llama:  # SwiGLU: down(silu(gate(x)) * up(x))
            self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=not self.llama)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.llama:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


def norm(cfg: GPTConfig) -> nn.Module:
    return nn.RMSNorm(cfg.d_model, eps=1e-6) if cfg.arch == "llama" else nn.LayerNorm(cfg.d_model, eps=1e-5)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class MinimalGPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model) if cfg.arch == "gpt2" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.arch == "llama":
            cos, sin = rotary_tables(cfg)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        if cfg.arch == "gpt2":  # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
            for name, p in self.named_parameters():
                if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                    nn.init.normal_(p, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)  # (B, T, d)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        else:
            rope = (self.cos, self.sin)
        for block in self.blocks:
            x = block(x, rope)
        return self.lm_head(self.norm_f(x))  # (B, T, vocab)


@torch.no_grad()
def load_hf_weights(model: MinimalGPT, hf: nn.Module) -> None:
    """Copy a Hugging Face LlamaForCausalLM / GPT2LMHeadModel of the same shapes into `model`."""
    sd = hf.state_dict()
    if model.cfg.arch == "llama":
        pairs = {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
        for i in range(model.cfg.n_layer):
            layer = f"model.layers.{i}."
            model.blocks[i].attn.qkv.weight.copy_(torch.cat([sd[f"{layer}self_attn.{n}_proj.weight"] for n in "qkv"]))
            pairs |= {f"blocks.{i}.attn.proj.weight": f"{layer}self_attn.o_proj.weight",
                      f"blocks.{i}.mlp.gate.weight": f"{layer}mlp.gate_proj.weight",
                      f"blocks.{i}.mlp.up.weight": f"{layer}mlp.up_proj.weight",
                      f"blocks.{i}.mlp.down.weight": f"{layer}mlp.down_proj.weight",
                      f"blocks.{i}.norm1.weight": f"{layer}input_layernorm.weight",
                      f"blocks.{i}.norm2.weight": f"{layer}post_attention_layernorm.weight"}
    else:  # GPT-2's Conv1D stores (in, out): transpose
        pairs = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
                 "norm_f.weight": "transformer.ln_f.weight", "norm_f.bias": "transformer.ln_f.bias"}
        for i in range(model.cfg.n_layer):
            h = f"transformer.h.{i}."
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                                 ("mlp.down", "mlp.c_proj")):
                submodule(model, f"blocks.{i}.{ours}.weight").copy_(sd[f"{h}{theirs}.weight"].T)
                pairs[f"blocks.{i}.{ours}.bias"] = f"{h}{theirs}.bias"
            for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
                pairs |= {f"blocks.{i}.{ours}.{w}": f"{h}{theirs}.{w}" for w in ("weight", "bias")}
    if not model.cfg.tie_embeddings:
        pairs["lm_head.weight"] = "lm_head.weight"
    for ours, theirs in pairs.items():
        submodule(model, ours).copy_(sd[theirs])


def submodule(module: nn.Module, path: str) -> torch.Tensor:
    """The parameter at a dotted path ("blocks.0.attn.qkv.weight")."""
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("layers", 4), ("heads", 4), ("dim", 128), ("context", 64), ("batch", 12), ("steps", 30),
                          ("vocab-size", 2048), ("warmup", 5), ("threads", 0)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ff = 4 * args.dim if args.arch == "gpt2" else 8 * -(-8 * args.dim // 3 // 8)
    torch.manual_seed(0)
    model = MinimalGPT(GPTConfig(args.vocab_size, args.context, args.layers, args.heads, args.heads, args.dim, ff,
                                 args.arch))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if args.compile else model
    data = torch.randint(0, args.vocab_size, (8, args.batch, args.context + 1))
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            t0 = time.perf_counter()
        x = data[step % len(data)]
        loss = F.cross_entropy(fwd(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": round(args.steps * args.batch * args.context / seconds, 1),
                      "step_ms": round(1000 * seconds / args.steps, 2), "loss": round(float(loss), 4),
                      "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
