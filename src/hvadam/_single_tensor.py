"""The readable path: one tensor at a time, each line a line of SPEC's "One step".

Every other path must give the numbers this one gives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvadam._common import (
    Prepared,
    Segment,
    add_share,
    buckets,
    decayed_weight_factor,
    effective_grad,
    eta_p_limit,
    step_scalars,
    take,
)
from hvadam.scope import Decision


def _dot(x: Tensor, y: Tensor) -> Tensor:
    return torch.dot(x.reshape(-1), y.reshape(-1))


def prepare(segment: Segment) -> Prepared:
    """Steps 1 and 3 (``t ← t + 1``, ``m ← β1·m + (1-β1)·g``) for every tensor, and the shares
    of ``(c, e, f)``."""
    opts = segment.options
    shares: dict = {}
    for indices in buckets(segment):
        steps = take(segment.steps, indices)
        for step in steps:  # t ← t + 1 (a loop, not foreach, so that the step can be vmapped)
            step.add_(1)
        scalars = step_scalars(steps, opts, segment.params[indices[0]].dtype)
        neg_bc1 = scalars.neg_bc1.unbind()
        dots = []
        for j, i in enumerate(indices):
            grad = effective_grad(segment.grads[i], segment.params[i], opts)
            exp_avg = segment.exp_avgs[i]
            exp_avg.lerp_(grad, 1 - opts.beta1)
            if opts.hidden_step:
                # u = m - bc1·v = bc1·(m̂ - v): the dots of m and u, divided by bc1², are this
                # tensor's <m̂,m̂>, <m̂,m̂-v> and <m̂-v,m̂-v>.
                u = torch.addcmul(exp_avg, segment.hidden_vectors[i], neg_bc1[j])
                dots += [_dot(exp_avg, exp_avg), _dot(exp_avg, u), _dot(u, u)]
        if dots:
            per_tensor = torch.stack(dots).view(-1, 3) * scalars.inv_bc1.square()[:, None]
            add_share(shares, segment.reduction_keys[indices[0]], per_tensor.sum(0))
    return Prepared(shares=shares)


def apply(segment: Segment, prepared: Prepared, decision: Decision | None) -> None:
    """Steps 2 (decoupled decay), 4-8 and the hidden-vector update of steps 9-10."""
    opts = segment.options
    factor = decayed_weight_factor(opts)
    for indices in buckets(segment):
        first = segment.params[indices[0]]
        scalars = step_scalars(take(segment.steps, indices), opts, first.dtype)
        eps_scaled, neg_step = scalars.eps_scaled.unbind(), scalars.neg_step.unbind()
        if decision is not None:
            # v ← v + w·(m̂ - v) = (1-w)·v + (w/bc1)·m; θ ← θ - α2·b_t·v.
            weight = decision.v_weight.to(device=first.device, dtype=first.dtype)
            keep = 1 - weight
            m_weights = (weight * scalars.inv_bc1).unbind()
            hidden_coef = decision.hidden_coef.to(device=first.device, dtype=first.dtype)
            neg_hidden_coef = hidden_coef * (-opts.lr_hidden)

        for j, i in enumerate(indices):
            param = segment.params[i]
            grad = effective_grad(segment.grads[i], param, opts)
            exp_avg = segment.exp_avgs[i]
            second_moment = segment.second_moments[i]
            if factor is not None:
                param.mul_(factor)

            if opts.hidden_moment:
                hidden = segment.hidden_vectors[i]
                distance = torch.sub(grad, hidden).square_()  # p = (g - v_{t-1})^2
                noise = torch.sub(grad, exp_avg).square_()  # (g - m_t)^2
                if opts.gamma != 0:
                    noise.add_(distance, alpha=opts.gamma)
                noise.add_(opts.eps)
                # η·p = p² / ((g-m)² + γp + ε) exceeds the dtype's range when g ≈ m but g ≠ v;
                # saturating it keeps s finite.
                eta_p = distance.div(noise).mul_(distance).clamp_(max=eta_p_limit(param.dtype))
                second_moment.lerp_(eta_p, 1 - opts.beta2).add_(opts.eps)
            else:
                second_moment.mul_(opts.beta2).addcmul_(grad, grad, value=1 - opts.beta2)

            if opts.amsgrad:
                max_second_moment = segment.max_second_moments[i]
                torch.maximum(max_second_moment, second_moment, out=max_second_moment)
                second_moment = max_second_moment

            # θ ← θ - lr·m̂/(√(s/bc2) + ε), as θ + m / ((√s + ε·√bc2) / (-lr·√bc2/bc1)).
            denom = second_moment.sqrt().add_(eps_scaled[j]).div_(neg_step[j])
            param.addcdiv_(exp_avg, denom)

            if decision is not None:
                hidden = segment.hidden_vectors[i]
                hidden.mul_(keep).addcmul_(exp_avg, m_weights[j])
                param.addcmul_(hidden, neg_hidden_coef)
