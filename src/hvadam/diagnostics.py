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
    while a restart is pending.
    """

    scope: str
    delta: float
    delta_hat: float
    hidden_step_size: float
    cosine: float
    steps_since_restart: int
    restart_count: int


def read_diagnostics(scopes: list[tuple[str, ScopeState]]) -> list[ScopeDiagnostics]:
    """Copy every scope's scalars to the host with a single synchronisation."""
    if not scopes:
        return []
    device = scopes[0][1].device
    rows = torch.stack(
        [
            torch.stack(
                [
                    state.delta.double(),
                    state.delta_hat.double(),
                    state.hidden_step_size.double(),
                    state.cosine.double(),
                    state.steps_since_restart.double(),
                    state.restart_count.double(),
                ]
            ).to(device)
            for _, state in scopes
        ]
    ).tolist()
    return [
        ScopeDiagnostics(
            scope=name,
            delta=row[0],
            delta_hat=row[1],
            hidden_step_size=row[2],
            cosine=row[3],
            steps_since_restart=int(row[4]),
            restart_count=int(row[5]),
        )
        for (name, _), row in zip(scopes, rows)
    ]
