"""The readable path: one tensor at a time, each line a line of docs/algorithm.md §3.

Every other path must give the numbers this one gives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvadam._common import (
    Prepared,
    Segment,
    buckets,
    decayed_weight_factor,
    device_scalar,
    effective_grad,
    saturation,
    step_scalars,
    take,
)
from hvadam.scope import Decision


class _Scratch:
    """``count`` buffers the size of a bucket's largest tensor, reused by every tensor of it.

    A fresh temporary per op costs more than the op on CPU once tensors pass a few hundred kB
    (the allocator hands large blocks back to the OS, so each one is page-faulted in again):
    at 500k floats per tensor this halved the time of ``apply``. Under ``torch.func.vmap``,
    which has no batching rule for ``out=``, every buffer is ``None``: ops allocate as usual.
    """

    def __init__(self, segment: Segment, indices: list[int], count: int) -> None:
        first = segment.params[indices[0]]
        self.count = count
        self.buffers = None
        if not torch._C._functorch.is_batchedtensor(first):
            largest = max(segment.params[i].numel() for i in indices)
            flat = torch.empty(count, largest, dtype=first.dtype, device=first.device)
            self.buffers = flat.unbind()

    def like(self, tensor: Tensor) -> list[Tensor | None]:
        """The buffers shaped as ``tensor`` (``None`` under vmap)."""
        if self.buffers is None:
            return [None] * self.count
        return [buffer[: tensor.numel()].view_as(tensor) for buffer in self.buffers]


def prepare(segment: Segment) -> Prepared:
    """Steps 1 and 3 (``t ← t + 1``, ``m ← β1·m + (1-β1)·g``) for every tensor, and each
    tensor's row of ``(c, e, f)``."""
    opts = segment.options
    rows = []
    for indices in buckets(segment):
        steps = take(segment.steps, indices)
        for step in steps:  # t ← t + 1 (a loop, not foreach, so that the step can be vmapped)
            step.add_(1)
        scalars = step_scalars(steps, opts, segment.params[indices[0]].dtype)
        neg_bc1 = scalars.neg_bc1.unbind()
        scratch = _Scratch(segment, indices, count=2 if opts.hidden_step else 1)
        # A 0-dim tensor weight: lerp_ runs ~20% faster on CPU with it than with a float, and
        # gives the same bits.
        momentum_weight = device_scalar(1 - opts.beta1, segment.params[indices[0]])
        dots = []
        for j, i in enumerate(indices):
            param, exp_avg = segment.params[i], segment.exp_avgs[i]
            grad_buffer, *dot_buffer = scratch.like(param)
            grad = effective_grad(segment.grads[i], param, opts, out=grad_buffer)
            exp_avg.lerp_(grad, momentum_weight)
            if opts.hidden_step:
                # u = m - bc1·v = bc1·(m̂ - v): the dots of m and u, divided by bc1², are this
                # tensor's <m̂,m̂>, <m̂,m̂-v> and <m̂-v,m̂-v>.
                m = exp_avg.reshape(-1)
                buffer = dot_buffer[0] if dot_buffer[0] is None else dot_buffer[0].reshape(-1)
                u = torch.addcmul(m, segment.hidden_vectors[i].reshape(-1), neg_bc1[j], out=buffer)
                dots += [torch.dot(m, m), torch.dot(m, u), torch.dot(u, u)]
        if dots:
            rows.append(
                (indices, torch.stack(dots).view(-1, 3) * scalars.inv_bc1.square()[:, None])
            )
    return Prepared(rows=rows)


def apply(segment: Segment, prepared: Prepared, decisions: list[Decision] | None) -> None:
    """Steps 2 (decoupled decay), 4-8 and the hidden-vector update of steps 9-10;
    ``decisions`` holds each bucket's tensors' decisions, in the order of ``prepared.rows``."""
    opts = segment.options
    factor = decayed_weight_factor(opts)
    for bucket, indices in enumerate(buckets(segment)):
        first = segment.params[indices[0]]
        scalars = step_scalars(take(segment.steps, indices), opts, first.dtype)
        eps_scaled, neg_step = scalars.eps_scaled.unbind(), scalars.neg_step.unbind()
        if decisions is not None:
            # v ← v + w·(m̂ - v) = (1-w)·v + (w/bc1)·m; θ ← θ - α2·b_t·v.
            weight = decisions[bucket].v_weight.to(device=first.device, dtype=first.dtype)
            keeps = (1 - weight).unbind()
            m_weights = (weight * scalars.inv_bc1).unbind()
            hidden_coef = decisions[bucket].hidden_coef.to(device=first.device, dtype=first.dtype)
            neg_hidden_coefs = (hidden_coef * (-opts.lr_hidden)).unbind()

        cap = opts.second_moment_cap if opts.hidden_moment else None
        scratch = _Scratch(segment, indices, count=2 if cap is None else 3)
        # 0-dim tensors: addcmul takes ε only this way, and lerp_ is faster so (see prepare).
        eps = device_scalar(opts.eps, first)
        second_moment_weight = device_scalar(1 - opts.beta2, first)
        eps_per_weight = device_scalar(opts.eps / (1 - opts.beta2), first)
        for j, i in enumerate(indices):
            param = segment.params[i]
            exp_avg = segment.exp_avgs[i]
            second_moment = segment.second_moments[i]
            first_buffer, second_buffer, *third = scratch.like(param)
            grad = effective_grad(segment.grads[i], param, opts, out=first_buffer)
            if factor is not None:
                param.mul_(factor)

            limit = saturation(param.dtype)
            if opts.hidden_moment:
                if cap is not None:  # cap·g², taken before g's buffer is reused
                    ceiling = torch.mul(grad, grad, out=third[0]).mul_(cap)
                noise = torch.sub(grad, exp_avg, out=second_buffer)
                noise = torch.addcmul(eps, noise, noise, out=second_buffer)  # (g - m_t)^2 + ε
                distance = grad.sub_(segment.hidden_vectors[i])  # g is a copy: reuse it
                distance.mul_(distance)  # p = (g - v_{t-1})^2 (mul_ is faster than square_)
                if opts.gamma != 0:
                    noise.add_(distance, alpha=opts.gamma)
                # Saturated, so that where p overflowed to inf, η·p = p·p/noise is inf (and
                # saturates below), never inf/inf = NaN.
                noise.clamp_(max=limit)
                # s ← s + (1-β2)·(η·p + ε/(1-β2) - s) is step 6 with its "+ ε" folded into the
                # lerp's target, one pass fewer. η·p = p² / ((g-m)² + γp + ε) exceeds the dtype's
                # range when g ≈ m but g ≠ v; saturating it keeps s finite.
                ratio = torch.div(distance, noise, out=second_buffer)
                if cap is None:
                    target = torch.addcmul(eps_per_weight, ratio, distance, out=second_buffer)
                else:
                    target = torch.minimum(ratio.mul_(distance), ceiling, out=second_buffer)
                    target.add_(eps_per_weight)
                target.clamp_(max=limit)
                second_moment.lerp_(target, second_moment_weight)
            else:
                # Adam's second moment, with g² saturated as η·p is (g² overflows from ~1e19
                # in float32).
                squared = torch.mul(grad, grad, out=second_buffer).clamp_(max=limit)
                second_moment.lerp_(squared, second_moment_weight)

            if opts.amsgrad:
                max_second_moment = segment.max_second_moments[i]
                torch.maximum(max_second_moment, second_moment, out=max_second_moment)
                second_moment = max_second_moment

            # θ ← θ - lr·m̂/(√(s/bc2) + ε), as θ + m / ((√s + ε·√bc2) / (-lr·√bc2/bc1)).
            denom = torch.sqrt(second_moment, out=second_buffer)
            denom.add_(eps_scaled[j]).div_(neg_step[j])
            param.addcdiv_(exp_avg, denom)

            if decisions is not None:
                hidden = segment.hidden_vectors[i]
                hidden.mul_(keeps[j]).addcmul_(exp_avg, m_weights[j])
                param.addcmul_(hidden, neg_hidden_coefs[j])
