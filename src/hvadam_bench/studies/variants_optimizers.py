"""The HVAdam family of the variants study, and what it records while it trains.

Every member is :class:`hvadam.HVAdam` with some of its options set (no new math lives here).
Two ways to run them:

* in the training workloads (PTB LSTM, digits, MNIST-1D, ring GAN), through the shared
  optimizer registry: :func:`register` adds one :class:`OptimizerSpec` per member, whose
  optimizer is a :class:`RecordingHVAdam` (HVAdam plus a diagnostics log, read every
  :data:`RECORD_EVERY` steps);
* on the landscapes (valley functions, the 20-D quadratic), many independent runs at once:
  :func:`run_family_batch` vmaps ``hvadam.functional.hvadam`` over rows, as the valley study's
  ``VmappedHVAdam`` does, with the member's options and the same diagnostics per row.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import hvadam.functional as F
from hvadam import HVAdam, ScopeState
from hvadam_bench.optimizers import SPECS, OptimizerSpec
from hvadam_bench.training import TrialFunction
from hvadam_bench.workloads.batched import VmappedHVAdam
from hvadam_bench.workloads.landscapes import DTYPE, Landscape

RECORD_EVERY = 10  # steps between two diagnostics records (each costs one host sync)
FIXED_LR_HIDDEN = 1e-2  # α2 of the decoupled member, whatever lr the tuning picks


@dataclass(frozen=True)
class Member:
    """One HVAdam configuration: its registry name, label, options and why it is tried."""

    name: str
    label: str
    options: dict
    why: str


FAMILY = (
    Member("hv-paper", "HVAdam (paper)", {}, "the reference: Algorithm 2 as docs/algorithm.md "
           "pins it"),
    Member("hv-no-restart", "HVAdam² (no restart)", {"variant": "hvadam2"},
           "the paper's ablation: is the restart worth what it costs?"),
    Member("hv-adam-moment", "HVAdam¹ (Adam's s + hidden step)", {"variant": "hvadam1"},
           "the paper's ablation: the hidden step alone, on Adam's second moment"),
    Member("hv-bias-corrected", "b_t from δ̂", {"bias_corrected_step": True},
           "δ starts at 0 and needs ~1/(1-β2) steps to grow, so the hidden step is off for "
           "most of a short run; δ̂ removes that start-up bias"),
    Member("hv-cosine-0.9", "cosine EMA 0.9", {"cosine_beta": 0.9},
           "a 10-step memory lets δ follow the cosine as it changes instead of averaging "
           "1000 steps of it"),
    Member("hv-gamma-1", "γ = 1", {"gamma": 1.0},
           "the paper's own cap η ≤ 1/γ: without it η·p grows without bound where g ≈ m, "
           "and the step shrinks"),
    Member("hv-cap-1", "η·p ≤ g²", {"second_moment_cap": 1.0},
           "caps each element's contribution at Adam's, so s never exceeds Adam's second "
           "moment and the step is never smaller than Adam's"),
    Member("hv-lr-hidden", f"α2 = {FIXED_LR_HIDDEN:g}", {"lr_hidden": FIXED_LR_HIDDEN},
           "the paper's Algorithm 2 has its own α2: the hidden step then keeps its size when "
           "tuning picks a small lr for the adaptive step"),
    Member("hv-restart-0.5", "restart at δ̂ < 0.5", {"restart_threshold": 0.5},
           "a hidden vector that has stopped agreeing with the momentum is replaced sooner"),
)  # fmt: skip
MEMBERS = {member.name: member for member in FAMILY}
REFERENCE = "hv-paper"


# --- training workloads: a recording HVAdam in the shared registry ----------------------------

_ACTIVE: list[RecordingHVAdam] = []  # the recorders built since the current trial began


class RecordingHVAdam(HVAdam):
    """HVAdam that logs, every ``record_every`` steps, per scope of its first param group:
    δ, δ̂, b_t, restarts, the hidden step's share of the parameters' change, and
    mean(s) / mean(EMA of g²), with the EMA kept here at the group's β2 as Adam keeps it
    (so the ratio is 1 for Adam's second moment; above 1, HVAdam's step is smaller)."""

    def __init__(self, params, record_every: int = RECORD_EVERY, **options):
        super().__init__(params, **options)
        self.record_every = record_every
        self.records: list[dict] = []
        self._squared_gradient_ema: dict[Tensor, Tensor] = {}
        self._steps_taken = 0
        _ACTIVE.append(self)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # the gradients the EMA needs exist only after the closure
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            emas = [self._squared_gradient_ema.setdefault(p, torch.zeros_like(p)) for p in params]
            grads = [p.grad for p in params]
            beta2 = group["betas"][1]
            torch._foreach_mul_(emas, beta2)
            torch._foreach_addcmul_(emas, grads, grads, value=1 - beta2)
        self._steps_taken += 1
        recording = bool(params) and (
            self._steps_taken == 1 or self._steps_taken % self.record_every == 0
        )
        before = [p.detach().clone() for p in params] if recording else None
        super().step()
        if recording:
            self.records.append(self._measure(group, params, before))
        return loss

    def _measure(self, group: dict, params: list[Tensor], before: list[Tensor]) -> dict:
        change = math.sqrt(sum(float((p - b).pow(2).sum()) for p, b in zip(params, before)))
        second = [self.state[p]["second_moment"].float() for p in params]
        emas = [self._squared_gradient_ema[p].float() for p in params]
        record = {
            "step": self._steps_taken,
            "ratio_mean": _ratio(sum(float(s.sum()) for s in second),
                                 sum(float(e.sum()) for e in emas)),
            "ratio_median": float(torch.cat([
                (s / e.clamp_min(1e-30)).flatten() for s, e in zip(second, emas)
            ]).median()),
        }  # fmt: skip
        scopes = self.diagnostics()
        if scopes and group.get("variant") != "hvadam0":
            scope = scopes[0]
            lr_hidden = group["lr"] if group["lr_hidden"] is None else group["lr_hidden"]
            hidden_norm = math.sqrt(
                sum(float(self.state[p]["hidden_vector"].float().pow(2).sum()) for p in params)
            )
            hidden_step = float(lr_hidden) * scope.hidden_step_size * hidden_norm
            record.update(
                delta=scope.delta, delta_hat=scope.delta_hat, b=scope.hidden_step_size,
                restarts=scope.restart_count, hidden_share=_ratio(hidden_step, change),
            )  # fmt: skip
        return record


def _ratio(numerator: float, denominator: float) -> float | None:
    if denominator > 0 and math.isfinite(numerator) and math.isfinite(denominator):
        return numerator / denominator
    return None


def _build(member: Member) -> Callable:
    def build(groups: list[dict], beta2: float) -> HVAdam:
        return RecordingHVAdam(groups, betas=(0.9, beta2), **member.options)

    return build


def register() -> None:
    """Add every member to the shared registry (once per process; workers call it too)."""
    for member in FAMILY:
        if member.name not in SPECS:
            SPECS[member.name] = OptimizerSpec(
                member.name, member.label, "hvadam", "beta2", _build(member), default=False
            )


def recording(trial_fn: TrialFunction) -> TrialFunction:
    """``trial_fn`` whose result also holds ``metric_diagnostics``: the log of each
    :class:`RecordingHVAdam` the trial built (the GAN builds two: generator, then critic)."""

    def wrapped(trial, checkpointer) -> dict:
        _ACTIVE.clear()
        result = trial_fn(trial, checkpointer)
        if _ACTIVE:
            result = {**result, "metric_diagnostics": [r.records for r in _ACTIVE]}
        _ACTIVE.clear()
        return result

    return wrapped


# --- landscapes: many runs at once, vmapped --------------------------------------------------


class VmappedMember(VmappedHVAdam):
    """The valley study's vmapped HVAdam runs, with a member's options."""

    def __init__(self, rows: Tensor, lrs: Tensor, beta2: float, options: dict):
        super().__init__(rows, lrs, beta2, options.get("variant", "hvadam"))
        self.options = {k: v for k, v in options.items() if k != "variant"}

    def _one(self, x, grad, exp_avg, second_moment, hidden, step, scope, lr):
        F.hvadam(
            [x], [grad], [exp_avg], [second_moment], [hidden], [step], ScopeState(*scope),
            lr=lr, betas=(0.9, self.beta2), variant=self.variant, foreach=False, **self.options,
        )  # fmt: skip
        return x


@dataclass
class FamilyBatch:
    """``values`` (steps + 1, configs, starts); ``diagnostics``: name -> (records, configs,
    starts), recorded at ``record_steps``."""

    values: Tensor
    record_steps: list[int]
    diagnostics: dict[str, Tensor]


DIAGNOSTIC_NAMES = ("delta", "b", "restarts", "hidden_share", "ratio_mean")


def run_family_batch(
    member: Member,
    landscape: Landscape,
    starts: Tensor,
    configs: list[tuple[float, float]],
    steps: int,
    record_every: int = RECORD_EVERY,
) -> FamilyBatch:
    """Run ``member`` from every start under every ``(lr, β2)`` config for ``steps`` steps
    (each run a scope of its own), recording the diagnostics of :class:`RecordingHVAdam`."""
    starts = starts.to(DTYPE)
    n_configs, n_starts = len(configs), starts.shape[0]
    values = torch.empty(steps + 1, n_configs, n_starts, dtype=DTYPE)
    record_steps = [t for t in range(1, steps + 1) if t == 1 or t % record_every == 0]
    diagnostics = {
        name: torch.full((len(record_steps), n_configs, n_starts), math.nan, dtype=DTYPE)
        for name in DIAGNOSTIC_NAMES
    }
    by_beta2: dict[float, list[int]] = {}
    for index, (_, beta2) in enumerate(configs):
        by_beta2.setdefault(beta2, []).append(index)
    lr_hidden = member.options.get("lr_hidden")
    for beta2, indices in by_beta2.items():
        lrs = torch.tensor([configs[i][0] for i in indices], dtype=DTYPE).repeat_interleave(
            n_starts
        )
        runner = VmappedMember(starts.repeat(len(indices), 1), lrs, beta2, member.options)
        squared_gradient_ema = torch.zeros_like(runner.x)
        shape = (len(indices), n_starts)
        for t in range(steps + 1):
            x = runner.x.detach().requires_grad_()
            f = landscape.value(x)
            (grad,) = torch.autograd.grad(f.sum(), x)
            values[t, indices] = f.detach().view(shape)
            if t == steps:
                break
            squared_gradient_ema.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            before = runner.x.clone()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="There is a performance drop")
                runner.step(grad)
            if t + 1 not in record_steps:
                continue
            row = record_steps.index(t + 1)
            scope = runner.scope
            b = scope.hidden_step_size.view(-1).to(DTYPE)
            step_lr = lrs if lr_hidden is None else torch.full_like(lrs, lr_hidden)
            hidden_step = step_lr * b * runner.hidden.to(DTYPE).norm(dim=1)
            change = (runner.x - before).norm(dim=1)
            ratio = runner.second_moment.to(DTYPE).mean(dim=1) / squared_gradient_ema.mean(dim=1)
            measured = {
                "delta": scope.delta.view(-1), "b": b, "restarts": scope.restart_count.view(-1),
                "hidden_share": hidden_step / change, "ratio_mean": ratio,
            }  # fmt: skip
            for name, value in measured.items():
                diagnostics[name][row, indices] = value.to(DTYPE).view(shape)
    return FamilyBatch(values, record_steps, diagnostics)
