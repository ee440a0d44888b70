"""An independent HVAdam in float64 NumPy, from the paper's Algorithm 2 and docs/algorithm.md.

It shares no code with the library and follows the spec literally: the hidden vector is
formed explicitly as v' = k·v + (1-k)·m̂ over the concatenation of the scope's tensors, and
the cosine is measured on that vector with ordinary norms (the library uses a one-pass
algebraic form instead).

It also follows the project's rule for non-finite values (README, "Numerics"): a tensor whose
<m̂,m̂>, <m̂,m̂-v> or <m̂-v,m̂-v> is not finite is left out of the vectors the decision is
computed on, and takes no part in the hidden update (its v changes only on a restart, and it
takes no hidden step); a b_t that is not finite is treated as a degenerate cosine; both count as
a non-finite step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

VARIANT_FLAGS = {  # (hidden second moment, hidden step, restart)
    "hvadam": (True, True, True),
    "hvadam2": (True, True, False),
    "hvadam1": (False, True, False),
    "hvadam0": (False, False, False),
}


@dataclass
class GroupConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-16
    gamma: float = 0.0
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    fixed_decay: bool = False
    amsgrad: bool = False
    maximize: bool = False
    lr_hidden: float | None = None
    restart_threshold: float = 0.1
    hidden_step_size: tuple[float, float] | Callable[[float], float] = (6.0, -3.0)
    variant: str = "hvadam"
    scope: str = "group"
    cosine_beta: float | None = None
    bias_corrected_step: bool = False
    second_moment_cap: float | None = None

    def torch_kwargs(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TensorState:
    t: int = 0
    m: np.ndarray | None = None
    s: np.ndarray | None = None
    s_max: np.ndarray | None = None
    v: np.ndarray | None = None


SATURATION = np.finfo(np.float64).max / 4


@dataclass
class ScopeScalars:
    t2: int = -1
    delta: float = 0.0
    restarts: int = 0
    last_b: float = 0.0
    nonfinite_steps: int = 0


@dataclass
class ReferenceHVAdam:
    params: list[list[np.ndarray]]  # per group, per tensor (float64, updated in place)
    configs: list[GroupConfig]
    states: dict = field(default_factory=dict)
    scopes: dict = field(default_factory=dict)

    def _scope_keys(self):
        """[(scope key, [(group, tensor)])] in the order the spec's scopes are defined."""
        out, shared = [], []
        for gi, (group, config) in enumerate(zip(self.params, self.configs)):
            members = [(gi, ti) for ti in range(len(group))]
            if config.scope == "group":
                out.append((("group", gi), members))
            elif config.scope == "tensor":
                out.extend(((("tensor", gi, ti), [m]) for ti, m in enumerate(members)))
            else:
                shared.extend(members)
        if shared:
            out.append((("global",), shared))
        return out

    def step(self, grads: list[list[np.ndarray | None]]) -> None:
        for key, members in self._scope_keys():
            members = [(gi, ti) for gi, ti in members if grads[gi][ti] is not None]
            if members:
                self._step_scope(key, members, grads)

    def _step_scope(self, key, members, grads) -> None:
        m_hats = []
        for gi, ti in members:
            c = self.configs[gi]
            theta = self.params[gi][ti]
            beta1, beta2 = c.betas
            hidden_moment, hidden_step, _ = VARIANT_FLAGS[c.variant]
            st = self.states.setdefault((gi, ti), TensorState())
            if st.m is None:
                st.m, st.s, st.s_max = (np.zeros_like(theta) for _ in range(3))
                st.v = np.zeros_like(theta)
            g = grads[gi][ti].astype(np.float64)
            # 1. t ← t + 1
            st.t += 1
            if c.maximize:
                g = -g
            # 2. weight decay
            if c.weight_decay:
                if c.fixed_decay:
                    theta *= 1 - c.weight_decay
                elif c.decoupled_weight_decay:
                    theta *= 1 - c.lr * c.weight_decay
                else:
                    g = g + c.weight_decay * theta
            # The library's saturation (README, "Numerics"): g, p, the noise term and η·p are
            # held to half the largest float, so nothing finite overflows into inf/inf; ±inf in
            # g saturates too, NaN passes through into this tensor's moments.
            g = np.clip(g, -SATURATION, SATURATION)
            # 3. m ← β1·m + (1-β1)·g
            st.m = beta1 * st.m + (1 - beta1) * g
            with np.errstate(over="ignore", invalid="ignore"):
                if hidden_moment:
                    # 4. p ← (g - v)²  (v is still v_{t-1})
                    p = np.minimum((g - st.v) ** 2, SATURATION)
                    # 5. η ← p / ((g - m)² + γ·p + ε)
                    noise = np.minimum((g - st.m) ** 2 + c.gamma * p + c.eps, SATURATION)
                    # 6. s ← β2·s + (1-β2)·η·p + ε
                    eta_p = p / noise * p
                    if c.second_moment_cap is not None:
                        eta_p = np.minimum(eta_p, c.second_moment_cap * g * g)
                    eta_p = np.minimum(eta_p, SATURATION)
                    st.s = beta2 * st.s + (1 - beta2) * eta_p + c.eps
                else:
                    st.s = beta2 * st.s + (1 - beta2) * np.minimum(g * g, SATURATION)
            s = st.s
            if c.amsgrad:
                st.s_max = np.maximum(st.s_max, st.s)
                s = st.s_max
            # 7. bias correction and denominator
            m_hat = st.m / (1 - beta1**st.t)
            d = np.sqrt(s / (1 - beta2**st.t)) + c.eps
            # 8. the adaptive step
            theta -= c.lr * m_hat / d
            m_hats.append(m_hat)

        c0 = self.configs[members[0][0]]
        _, hidden_step, restart = VARIANT_FLAGS[c0.variant]
        if not hidden_step:
            return
        beta2 = c0.betas[1]
        sc = self.scopes.setdefault(key, ScopeScalars())
        states = [self.states[m] for m in members]
        sizes = [m.size for m in m_hats]
        M = np.concatenate([m.ravel() for m in m_hats])
        V = np.concatenate([st.v.ravel() for st in states])
        with np.errstate(all="ignore"):
            kept = [
                bool(np.isfinite([m.ravel() @ m.ravel(), m.ravel() @ d, d @ d]).all())
                for m, st in zip(m_hats, states)
                for d in [(m - st.v).ravel()]
            ]
        kept_elements = np.concatenate([np.full(n, keep) for n, keep in zip(sizes, kept)])
        M_kept, V_kept = M[kept_elements], V[kept_elements]
        left_out = not all(kept)

        sc.t2 += 1
        sc.last_b = 0.0
        if sc.t2 == 0:  # 9. restart: v ← m̂, δ ← 0, no hidden step
            new_v = M
            sc.delta = 0.0
            sc.nonfinite_steps += left_out
        else:  # 10.
            D = M_kept - V_kept
            dd = float(D @ D)
            k = float(M_kept @ D) / dd if dd != 0 else 0.0
            # The decision (k, cosine, b) comes from the kept tensors alone, and only they
            # follow it: a left-out tensor keeps its v and takes no hidden step.
            with np.errstate(all="ignore"):
                candidate = np.where(kept_elements, k * V + (1 - k) * M, V)
            candidate_kept = candidate[kept_elements]
            norm_v, norm_m = np.linalg.norm(candidate_kept), np.linalg.norm(M_kept)
            with np.errstate(all="ignore"):
                cos = float(candidate_kept @ M_kept) / (norm_v * norm_m)
            # The algorithm's "|v'| = 0" (docs/algorithm.md §8.2), at float64 working precision:
            # the library resolves |v'|² only down to 32·eps·|m̂|² (beyond that it is rounding
            # noise), and so does this.
            negligible = norm_v**2 <= 32 * np.finfo(np.float64).eps * norm_m**2
            if not math.isfinite(cos) or abs(cos) > 1 or norm_m == 0 or negligible:
                sc.t2 -= 1  # change nothing
                sc.nonfinite_steps += left_out
                return
            rate = beta2 if c0.cosine_beta is None else c0.cosine_beta
            delta = rate * sc.delta + (1 - rate) * cos
            delta_hat = delta / (1 - rate**sc.t2)
            if restart and delta_hat < c0.restart_threshold:
                sc.delta = delta
                sc.t2 = -1
                sc.restarts += 1
                sc.nonfinite_steps += left_out
                return
            rule = c0.hidden_step_size
            sizing = delta_hat if c0.bias_corrected_step else delta
            with np.errstate(all="ignore"):
                b = float(
                    rule(np.float64(sizing))
                    if callable(rule)
                    else np.power(10.0, rule[0] * sizing + rule[1])
                )
            if not math.isfinite(b):
                sc.t2 -= 1  # a b_t that is not finite changes nothing, as a degenerate cosine
                sc.nonfinite_steps += 1
                return
            sc.nonfinite_steps += left_out
            sc.delta = delta
            sc.last_b = b
            new_v = candidate
            offset = 0
            for (gi, ti), size, keep in zip(members, sizes, kept):
                c = self.configs[gi]
                lr_hidden = c.lr if c.lr_hidden is None else c.lr_hidden
                piece = new_v[offset : offset + size].reshape(self.params[gi][ti].shape)
                if keep:
                    self.params[gi][ti] -= lr_hidden * b * piece
                offset += size
        offset = 0
        for st, size in zip(states, sizes):
            st.v = new_v[offset : offset + size].reshape(st.v.shape).copy()
            offset += size
