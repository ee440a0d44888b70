"""Read-only diagnostics of the hidden vector, for logging."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hvadam.scope import ScopeState


@dataclass(frozen=True)
class ScopeDiagnostics:
    """One scope's hidden-vector statistics after the last step.

    ``delta`` (δ) is the EMA of the cosine between the hidden vector and the bias-corrected
    momentum and ``delta_hat`` (δ̂) its bias-corrected value; ``hidden_step_size`` is the ``b_t``
    applied in the last step (0 when no hidden step was taken); ``steps_since_restart`` is -1
    while a restart is pending. ``nonfinite_steps`` counts the steps in which some tensor of the
    scope was left out of the decision because its inner products were not finite (a NaN or
    inf gradient or state, or values whose squares overflow the dtype), or ``b_t`` was not
    finite; a healthy scope keeps it at 0.
    """

    scope: str
    delta: float
    delta_hat: float
    hidden_step_size: float
    cosine: float
    steps_since_restart: int
    restart_count: int
    nonfinite_steps: int


def read_diagnostics(scopes: list[tuple[str, ScopeState]]) -> list[ScopeDiagnostics]:
    """Copy every scope's scalars to the host with a single synchronisation."""
    if not scopes:
        return []
    device = scopes[0][1].device
    rows = torch.stack(
        [
            torch.cat([value.reshape(1).double() for value in state]).to(device)
            for _, state in scopes
        ]
    ).tolist()
    diagnostics = []
    for (name, _), row in zip(scopes, rows):
        values = dict(zip(ScopeState._fields, row))
        diagnostics.append(
            ScopeDiagnostics(
                scope=name,
                delta=values["delta"],
                delta_hat=values["delta_hat"],
                hidden_step_size=values["hidden_step_size"],
                cosine=values["cosine"],
                steps_since_restart=int(values["steps_since_restart"]),
                restart_count=int(values["restart_count"]),
                nonfinite_steps=int(values["nonfinite_steps"]),
            )
        )
    return diagnostics
