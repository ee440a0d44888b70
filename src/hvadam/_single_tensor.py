"""The readable path: one tensor at a time, each line a line of SPEC's "One step".

Every other path must give the numbers this one gives (the tests hold them to it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvadam._common import (
    Prepared,
    Segment,
    add_share,
    bias_correction,
    decayed_weight_factor,
    effective_grad,
    eta_p_limit,
)
from hvadam.scope import Decision


def _dot(x: Tensor, y: Tensor) -> Tensor:
    return torch.dot(x.reshape(-1), y.reshape(-1))


def prepare(segment: Segment) -> Prepared:
    """Steps 1-3 for every tensor, and the tensor's share of ``(c, e, f)`` for the scope."""
    opts = segment.options
    grads: list[Tensor] = []
    shares: dict = {}
    for i, param in enumerate(segment.params):
        grad = effective_grad(segment.grads[i], param, opts)
        grads.append(grad)
        step = segment.steps[i]
        step += 1
        exp_avg = segment.exp_avgs[i]
        exp_avg.lerp_(grad, 1 - opts.beta1)
        if opts.hidden_step:
            m_hat = exp_avg / bias_correction(opts.beta1, step, exp_avg.dtype)
            diff = m_hat - segment.hidden_vectors[i]
            share = torch.stack([_dot(m_hat, m_hat), _dot(m_hat, diff), _dot(diff, diff)])
            add_share(shares, segment.reduction_keys[i], share)
    return Prepared(grads=grads, shares=shares)


def apply(segment: Segment, prepared: Prepared, decision: Decision | None) -> None:
    """Steps 2 (decoupled decay), 4-8 and the hidden-vector update of steps 9-10."""
    opts = segment.options
    for i, param in enumerate(segment.params):
        grad = prepared.grads[i]
        exp_avg = segment.exp_avgs[i]
        second_moment = segment.second_moments[i]
        step = segment.steps[i]
        dtype = param.dtype

        factor = decayed_weight_factor(opts)
        if factor is not None:
            param.mul_(factor)

        if opts.hidden_moment:
            hidden = segment.hidden_vectors[i]
            distance = (grad - hidden).square_()  # p = (g - v_{t-1})^2
            noise = (grad - exp_avg).square_()  # (g - m_t)^2
            if opts.gamma != 0:
                noise.add_(distance, alpha=opts.gamma)
            noise.add_(opts.eps)
            # η·p = p² / ((g-m)² + γp + ε) can exceed the dtype's range when g ≈ m but g ≠ v;
            # saturating it at half the max (so the EMA cannot round up to inf) keeps s finite.
            eta_p = distance.div(noise).mul_(distance).clamp_(max=eta_p_limit(dtype))
            second_moment.mul_(opts.beta2).add_(eta_p, alpha=1 - opts.beta2).add_(opts.eps)
        else:
            second_moment.mul_(opts.beta2).addcmul_(grad, grad, value=1 - opts.beta2)

        if opts.amsgrad:
            max_second_moment = segment.max_second_moments[i]
            torch.maximum(max_second_moment, second_moment, out=max_second_moment)
            second_moment = max_second_moment

        bc1 = bias_correction(opts.beta1, step, dtype)
        bc2 = bias_correction(opts.beta2, step, dtype)
        denom = (second_moment.sqrt() / bc2.sqrt()).add_(opts.eps)
        m_hat = exp_avg / bc1
        param.sub_(m_hat.div(denom).mul_(opts.lr))

        if decision is not None:
            hidden = segment.hidden_vectors[i]
            weight = decision.v_weight.to(device=param.device, dtype=dtype)
            coef = decision.hidden_coef.to(device=param.device, dtype=dtype)
            hidden.lerp_(m_hat, weight)
            param.addcmul_(hidden, coef * opts.lr_hidden, value=-1)
