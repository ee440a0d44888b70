"""The multi-tensor path: the readable path's arithmetic as ``torch._foreach_*`` calls over
buckets of tensors that share a device, a dtype and a reduction key."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from hvadam._common import (
    GroupOptions,
    Prepared,
    Segment,
    add_share,
    decayed_weight_factor,
    eta_p_limit,
)
from hvadam.scope import Decision


def _buckets(segment: Segment) -> list[list[int]]:
    buckets: dict = defaultdict(list)
    for i, param in enumerate(segment.params):
        buckets[(param.device, param.dtype, segment.reduction_keys[i])].append(i)
    return list(buckets.values())


def _take(tensors: list[Tensor], indices: list[int]) -> list[Tensor]:
    return [tensors[i] for i in indices] if tensors else []


def _bias_corrections(beta: float, steps: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    powers = torch._foreach_pow(beta, [step.to(dtype) for step in steps])
    torch._foreach_neg_(powers)
    torch._foreach_add_(powers, 1)
    return powers


def _signed_sum(tensors: list[Tensor]) -> Tensor:
    """``Σ x`` over every element of every tensor, as ``2·Σ max(x, 0) - Σ|x|``.

    foreach offers norms only. The rounding error of this form is bounded by ``ε·Σ|x|``, the
    same bound a direct dot product has, so no accuracy is lost.
    """
    positive = torch._foreach_clamp_min(tensors, 0.0)
    return 2 * _total(torch._foreach_norm(positive, 1)) - _total(torch._foreach_norm(tensors, 1))


def _total(values: list[Tensor] | tuple[Tensor, ...], power: int = 1) -> Tensor:
    """The sum of per-tensor norms, or of their squares with ``power=2``."""
    stacked = torch.stack(list(values))
    return (stacked * stacked if power == 2 else stacked).sum()


def _effective_grads(grads: list[Tensor], params: list[Tensor], opts: GroupOptions):
    if opts.maximize:
        grads = torch._foreach_neg(grads)
    if opts.decay == "l2" and opts.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=opts.weight_decay)
    return grads


def prepare(segment: Segment) -> Prepared:
    """Steps 1-3 per bucket, and each bucket's share of ``(c, e, f)``."""
    opts = segment.options
    grads: list[Tensor | None] = [None] * len(segment.params)
    shares: dict = {}
    for indices in _buckets(segment):
        params = _take(segment.params, indices)
        bucket_grads = _effective_grads(_take(segment.grads, indices), params, opts)
        for i, grad in zip(indices, bucket_grads):
            grads[i] = grad
        steps = _take(segment.steps, indices)
        exp_avgs = _take(segment.exp_avgs, indices)
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avgs, bucket_grads, 1 - opts.beta1)
        if opts.hidden_step:
            m_hats = torch._foreach_div(
                exp_avgs, _bias_corrections(opts.beta1, steps, params[0].dtype)
            )
            diffs = torch._foreach_sub(m_hats, _take(segment.hidden_vectors, indices))
            share = torch.stack(
                [
                    _total(torch._foreach_norm(m_hats, 2), power=2),
                    _signed_sum(torch._foreach_mul(m_hats, diffs)),
                    _total(torch._foreach_norm(diffs, 2), power=2),
                ]
            )
            add_share(shares, segment.reduction_keys[indices[0]], share)
    return Prepared(grads=grads, shares=shares)


def apply(segment: Segment, prepared: Prepared, decision: Decision | None) -> None:
    """Steps 2 (decoupled decay), 4-8 and the hidden-vector update, per bucket."""
    opts = segment.options
    for indices in _buckets(segment):
        params = _take(segment.params, indices)
        grads = _take(prepared.grads, indices)
        exp_avgs = _take(segment.exp_avgs, indices)
        second_moments = _take(segment.second_moments, indices)
        steps = _take(segment.steps, indices)
        dtype = params[0].dtype

        factor = decayed_weight_factor(opts)
        if factor is not None:
            torch._foreach_mul_(params, factor)

        if opts.hidden_moment:
            hidden = _take(segment.hidden_vectors, indices)
            distance = torch._foreach_sub(grads, hidden)
            torch._foreach_mul_(distance, distance)
            noise = torch._foreach_sub(grads, exp_avgs)
            torch._foreach_mul_(noise, noise)
            if opts.gamma != 0:
                torch._foreach_add_(noise, distance, alpha=opts.gamma)
            torch._foreach_add_(noise, opts.eps)
            eta_p = torch._foreach_div(distance, noise)
            torch._foreach_mul_(eta_p, distance)
            torch._foreach_clamp_max_(eta_p, eta_p_limit(dtype))
            torch._foreach_mul_(second_moments, opts.beta2)
            torch._foreach_add_(second_moments, eta_p, alpha=1 - opts.beta2)
            torch._foreach_add_(second_moments, opts.eps)
        else:
            torch._foreach_mul_(second_moments, opts.beta2)
            torch._foreach_addcmul_(second_moments, grads, grads, value=1 - opts.beta2)

        if opts.amsgrad:
            max_second_moments = _take(segment.max_second_moments, indices)
            torch._foreach_maximum_(max_second_moments, second_moments)
            second_moments = max_second_moments

        bc1 = _bias_corrections(opts.beta1, steps, dtype)
        bc2 = _bias_corrections(opts.beta2, steps, dtype)
        denom = torch._foreach_sqrt(second_moments)
        torch._foreach_div_(denom, torch._foreach_sqrt(bc2))
        torch._foreach_add_(denom, opts.eps)
        m_hats = torch._foreach_div(exp_avgs, bc1)
        updates = torch._foreach_div(m_hats, denom)
        torch._foreach_mul_(updates, opts.lr)
        torch._foreach_sub_(params, updates)

        if decision is not None:
            hidden = _take(segment.hidden_vectors, indices)
            weight = decision.v_weight.to(device=params[0].device, dtype=dtype)
            coef = decision.hidden_coef.to(device=params[0].device, dtype=dtype)
            torch._foreach_lerp_(hidden, m_hats, [weight] * len(hidden))
            torch._foreach_add_(params, torch._foreach_mul(hidden, coef * opts.lr_hidden), alpha=-1)
