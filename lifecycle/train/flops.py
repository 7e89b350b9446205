"""Model FLOPs utilisation (MFU): training FLOPs per token, the device's peak FLOP/s, and their ratio.

FLOPs per token (PaLM appendix B / nanoGPT): 6 * N + 12 * n_layer * d_model * context, where N counts the
weights every token is multiplied with (all non-embedding matrices plus the LM head; the token-embedding
lookup costs no FLOPs) and the second term is attention's QK^T and AV over the context.

Peak FLOP/s of one device: `pretrain.peak_flops` when set, else
- CUDA: a table of dense bf16 tensor-core peaks by GPU name (fp32 matmuls run as TF32: half of that);
- CPU: cores x clock x FLOPs per cycle per core (64 fp32 with AVX-512's two FMA units, 32 with AVX2+FMA,
  1024 bf16 with AMX), read from /proc/cpuinfo. A rough upper bound, so CPU MFU is indicative only.

    peak, source = detect_peak_flops(torch.device("cpu"), "fp32")
    mfu(flops_per_token(sizes, n_layer, d_model, context), tokens_per_s, peak)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("lifecycle.train")

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, matched against the device name.
GPU_BF16_PEAK = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("A6000", 155e12),
]


def flops_per_token(matmul_params: int, n_layer: int, d_model: int, context: int) -> float:
    """Forward + backward FLOPs to train on one token."""
    return 6.0 * matmul_params + 12.0 * n_layer * d_model * context


def mfu(flops_per_tok: float, tokens_per_s: float, peak_flops: float | None, devices: int = 1) -> float:
    """Achieved / peak FLOP/s over all devices (0 when the peak is unknown)."""
    if not peak_flops:
        return 0.0
    return flops_per_tok * tokens_per_s / (peak_flops * devices)


def detect_peak_flops(device: torch.device, dtype: str, configured: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the number came from)."""
    if configured:
        return configured, "config pretrain.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK:
            if key.lower() in name.lower():
                return (peak if dtype == "bf16" else peak / 2), f"table: {key} {'bf16' if dtype == 'bf16' else 'tf32'}"
        log.warning("MFU: unknown GPU '%s'; set pretrain.peak_flops to report MFU", name)
        return None, f"unknown GPU {name}"
    return _cpu_peak(dtype)


def _cpu_peak(dtype: str) -> tuple[float | None, str]:
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None, "no /proc/cpuinfo"
    text = info.read_text()
    flags: set[str] = set()
    mhz = 0.0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "cpu MHz" and not mhz:
            mhz = float(value)
    max_khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_khz.is_file():
        mhz = int(max_khz.read_text()) / 1000
    if not mhz:
        return None, "CPU clock unknown"
    if dtype == "bf16" and "amx_bf16" in flags:
        per_cycle, isa = 1024, "AMX bf16"
    elif "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512 fp32"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2 fp32"
    else:
        per_cycle, isa = 8, "SSE fp32"
    cores = torch.get_num_threads()
    return cores * mhz * 1e6 * per_cycle, f"estimate: {cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} ({isa})"
