"""
# Precision: `dtype=auto`

Training runs its forward pass in `float32`, or under `torch.autocast` in `bfloat16` or
`float16` (`dtype=...`). bf16 autocast pays only where the hardware multiplies bf16
matrices natively, at about twice the fp32 rate: CUDA GPUs with bf16 tensor cores (Ampere
and later), and CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than
fp32 (on the Xeons without AVX512-BF16 that the README measured, a bf16 matrix product ran
at a quarter of the fp32 rate).

`dtype=auto` asks the hardware at run time and picks bf16 where it has the units and
fp32 elsewhere. The run's `configs.yaml` records `dtype: auto`, and its log says which
one was taken.
"""

from pathlib import Path

import torch


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware."""
    if device.type == 'cuda':
        # compute capability 8.0 (Ampere) and up; earlier GPUs emulate it
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == 'cpu':
        return bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})
    return False


def cpu_flags() -> set:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return set()


def auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 where `device` has bf16 units, fp32 elsewhere."""
    return torch.bfloat16 if has_bf16_units(device) else torch.float32
