"""Stochastic rounding of float32 values to bfloat16, without random-number state.

Rounding ``m``, ``s`` and ``v`` to the nearest bfloat16 after every step loses small updates
for good (an EMA whose increment is below half an ulp never moves). Rounding up or down with
probability proportional to the distance keeps the stored value right *on average*. The
"random" bits here are a hash of the value's own bits, its position and the step, so they cost
no generator state, never touch torch's global RNG (a user's dropout masks stay as they were),
are identical on every run, and compile into the fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mix(h: Tensor) -> Tensor:
    """A 32-bit integer finalizer (xor-shift-multiply), on int64 tensors holding 32 bits."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _MASK32
    return h ^ (h >> 16)


def stochastic_round_bf16(x: Tensor, step: Tensor) -> Tensor:
    """``x`` (float32) rounded to bfloat16 up or down, with probability given by the 16 bits
    bfloat16 drops; ``step`` (a step counter) varies the dither from step to step."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    position = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
    seed = step.to(torch.int64) * 0x9E3779B1
    noise = _mix((bits & _MASK32) ^ _mix((position + seed) & _MASK32)) & 0xFFFF
    # bits are sign-magnitude: adding below the kept 16 bits rounds the magnitude up with
    # probability (dropped bits + 1) / 2^16, whatever the sign; then the dropped bits go.
    rounded = ((bits + noise) & ~0xFFFF).to(torch.int32).view(torch.float32)
    # Values whose rounding would carry into the exponent of inf or NaN keep plain rounding.
    finite = torch.isfinite(rounded) | ~torch.isfinite(x)
    return torch.where(finite, rounded, x).to(torch.bfloat16)


# Each state tensor of a parameter dithers with its own stream: seed = 4·t + stream.
STREAMS = {"second_moments": 0, "max_second_moments": 1, "hidden_vectors": 2, "exp_avgs": 3}


def store(target: Tensor, value: Tensor, seed: Tensor | None) -> None:
    """``target.copy_(value)``, rounding stochastically when a wider value goes into bfloat16
    state (``seed`` given); parameters (``seed`` None) keep round-to-nearest, as in torch."""
    if seed is not None and target.dtype == torch.bfloat16 and value.dtype != torch.bfloat16:
        value = stochastic_round_bf16(value.float(), seed)
    target.copy_(value)
