"""Benchmarks behind `lifecycle bench ...`; results and their commands are in docs/BENCHMARKS.md.
This module only declares the flags (cheap to import); the measurements live in the submodules."""

from __future__ import annotations

import argparse


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--heads", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--context", type=int, required=True, help="tokens the model sees per sequence")
    p.add_argument("--batch", type=int, required=True, help="sequences per optimizer step")
    p.add_argument("--steps", type=int, required=True, help="timed steps per round")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile every loop's model")
    p.add_argument("--arch", choices=["llama", "gpt2"], help="default: pretrain.model.arch from the config")
    p.add_argument("--ff", type=int, help="MLP size (default: 4 x dim for gpt2, ~8/3 x dim for llama)")
    p.add_argument("--micro-batch", type=int, help="micro-batch (default: --batch, no accumulation)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per loop, alternating; medians are reported")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, the physical cores); reported")
    p.add_argument("--no-reference", action="store_true", help="skip the bare loop around the same Hugging Face model")
    p.add_argument("--no-minimal", action="store_true", help="skip the bare loop around bench/minimal_gpt.py")
    p.add_argument("--profile", help="config profile whose pretrain section supplies the other values")
    p.add_argument("--conf", help="configuration folder (default: ./conf)")
