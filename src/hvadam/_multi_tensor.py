"""The multi-tensor path: the readable path's arithmetic as ``torch._foreach_*`` calls over
buckets of tensors that share a device, a dtype and a reduction key.

Per-tensor scalars are lists of 0-dim device tensors (as in torch's capturable Adam), so the
path never reads a value on the host.

Each foreach call covers a run of tensors holding at most :data:`CHUNK_ELEMENTS` elements, and
nothing the size of a run outlives it: the whole-list temporaries (distance, noise, η·p, the
denominator, m̂) cost a bounded few hundred MB instead of several floats per parameter of the
model. ``apply`` recomputes the effective gradients and m̂ rather than keeping ``prepare``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvadam._common import (
    GroupOptions,
    Prepared,
    Segment,
    buckets,
    decayed_weight_factor,
    saturation,
    step_scalars,
    take,
)
from hvadam.scope import Decision

# What the foreach ops take and return (they return tuples).
TensorList = list[Tensor] | tuple[Tensor, ...]


def _squared_norms(tensors: TensorList) -> Tensor:
    """``Σ x²`` of each tensor."""
    return torch.stack(torch._foreach_norm(tensors, 2)).square()


def _sums(tensors: TensorList) -> Tensor:
    """``Σ x`` of each tensor, as ``2·Σ max(x, 0) - Σ|x|``.

    foreach offers norms only. The rounding error of this form is bounded by ``ε·Σ|x|``, the
    same bound a direct dot product has, so no accuracy is lost.
    """
    positive = torch.stack(torch._foreach_norm(torch._foreach_clamp_min(tensors, 0.0), 1))
    return 2 * positive - torch.stack(torch._foreach_norm(tensors, 1))


# 2^24 elements: 64 MB per fp32 temporary, large enough that a launch per run is noise on GPU.
CHUNK_ELEMENTS = 1 << 24


def _effective_grads(grads: TensorList, params: list[Tensor], opts: GroupOptions) -> TensorList:
    """The gradients after ``maximize`` and L2 decay, saturated as
    :func:`hvadam._common.effective_grad` saturates them (new tensors, never the grads)."""
    limit = saturation(params[0].dtype)
    if opts.maximize:
        grads = torch._foreach_neg(grads)
    if opts.decay == "l2" and opts.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=opts.weight_decay)
    if opts.maximize or opts.decay == "l2" and opts.weight_decay != 0:
        torch._foreach_clamp_min_(grads, -limit)
    else:
        grads = torch._foreach_clamp_min(grads, -limit)
    torch._foreach_clamp_max_(grads, limit)
    return grads


def _runs(segment: Segment) -> list[list[int]]:
    """Each bucket's indices cut into runs of at most :data:`CHUNK_ELEMENTS` elements (a larger
    tensor makes a run of its own)."""
    runs = []
    for indices in buckets(segment):
        run: list[int] = []
        total = 0
        for i in indices:
            numel = segment.params[i].numel()
            if run and total + numel > CHUNK_ELEMENTS:
                runs.append(run)
                run, total = [], 0
            run.append(i)
            total += numel
        runs.append(run)
    return runs


def prepare(segment: Segment) -> Prepared:
    """Steps 1 and 3 per run of tensors, and each tensor's row of ``(c, e, f)``."""
    opts = segment.options
    rows = []
    for indices in _runs(segment):
        params = take(segment.params, indices)
        grads = _effective_grads(take(segment.grads, indices), params, opts)
        exp_avgs = take(segment.exp_avgs, indices)
        torch._foreach_add_(take(segment.steps, indices), 1)
        torch._foreach_lerp_(exp_avgs, grads, 1 - opts.beta1)
        if opts.hidden_step:
            scalars = step_scalars(take(segment.steps, indices), opts, params[0].dtype)
            m_hats = torch._foreach_mul(exp_avgs, list(scalars.inv_bc1.unbind()))
            diffs = torch._foreach_sub(m_hats, take(segment.hidden_vectors, indices))
            run_rows = torch.stack(
                [
                    _squared_norms(m_hats),
                    _sums(torch._foreach_mul(m_hats, diffs)),
                    _squared_norms(diffs),
                ],
                dim=1,
            )
            rows.append((indices, run_rows))
    return Prepared(rows=rows)


def _update_second_moments(
    grads: TensorList, segment: Segment, indices: list[int], opts: GroupOptions, dtype
) -> None:
    """Steps 4-6 for a run of tensors; the temporaries die on return."""
    second_moments = take(segment.second_moments, indices)
    limit = saturation(dtype)
    if not opts.hidden_moment:
        squared = torch._foreach_mul(grads, grads)
        torch._foreach_clamp_max_(squared, limit)  # saturated, as η·p is
        torch._foreach_lerp_(second_moments, squared, 1 - opts.beta2)
        return
    if opts.second_moment_cap is not None:
        ceiling = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(ceiling, opts.second_moment_cap)
    distance = torch._foreach_sub(grads, take(segment.hidden_vectors, indices))
    torch._foreach_mul_(distance, distance)
    noise = torch._foreach_sub(grads, take(segment.exp_avgs, indices))
    torch._foreach_mul_(noise, noise)
    if opts.gamma != 0:
        torch._foreach_add_(noise, distance, alpha=opts.gamma)
    torch._foreach_add_(noise, opts.eps)
    torch._foreach_clamp_max_(noise, limit)  # no inf/inf where p overflowed
    eta_p = torch._foreach_div(distance, noise)
    del noise
    torch._foreach_mul_(eta_p, distance)
    del distance
    if opts.second_moment_cap is not None:
        torch._foreach_minimum_(eta_p, ceiling)
        del ceiling
    torch._foreach_clamp_max_(eta_p, limit)
    torch._foreach_lerp_(second_moments, eta_p, 1 - opts.beta2)
    torch._foreach_add_(second_moments, opts.eps)


def apply(segment: Segment, prepared: Prepared, decisions: list[Decision] | None) -> None:
    """Steps 2 (decoupled decay), 4-8 and the hidden-vector update, per run of tensors;
    ``decisions`` holds each run's tensors' decisions, in the order of ``prepared.rows``."""
    opts = segment.options
    factor = decayed_weight_factor(opts)
    for run, indices in enumerate(_runs(segment)):
        params = take(segment.params, indices)
        exp_avgs = take(segment.exp_avgs, indices)
        dtype = params[0].dtype
        scalars = step_scalars(take(segment.steps, indices), opts, dtype)
        # Before decoupled decay touches θ (L2 decay, which reads θ, never comes with it).
        grads = _effective_grads(take(segment.grads, indices), params, opts)

        if factor is not None:
            torch._foreach_mul_(params, factor)
        _update_second_moments(grads, segment, indices, opts, dtype)
        del grads

        second_moments = take(segment.second_moments, indices)
        if opts.amsgrad:
            max_second_moments = take(segment.max_second_moments, indices)
            torch._foreach_maximum_(max_second_moments, second_moments)
            second_moments = max_second_moments

        denom = torch._foreach_sqrt(second_moments)
        torch._foreach_add_(denom, list(scalars.eps_scaled.unbind()))
        torch._foreach_div_(denom, list(scalars.neg_step.unbind()))
        torch._foreach_addcdiv_(params, exp_avgs, denom)
        del denom

        if decisions is not None:
            hidden = take(segment.hidden_vectors, indices)
            weights = decisions[run].v_weight.to(device=params[0].device, dtype=dtype)
            coefs = decisions[run].hidden_coef.to(device=params[0].device, dtype=dtype)
            m_hats = torch._foreach_mul(exp_avgs, list(scalars.inv_bc1.unbind()))
            torch._foreach_lerp_(hidden, m_hats, list(weights.unbind()))
            del m_hats
            neg_coefs = list((coefs * (-opts.lr_hidden)).unbind())
            torch._foreach_add_(params, torch._foreach_mul(hidden, neg_coefs))
