"""The optimizers every study compares, each from a maintained library, and their grids.

Every optimizer is tuned on the same two axes: the learning rate, and one second
hyperparameter: β2 for the adaptive methods (RMSprop's ``alpha`` is its β2), the momentum for
SGD. Both grids have the same number of points, so every optimizer gets the same budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.optim import Optimizer

from hvadam import HVAdam
from hvadam_bench.runner import BenchError

ParamGroups = list[dict]


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    label: str
    source: str  # the library it comes from
    second: str  # what the second tuned hyperparameter is: "beta2" or "momentum"
    build: Callable[[ParamGroups, float], Optimizer]  # (groups with "lr", second value)
    hvadam_variant: str | None = None  # HVAdam and its ablations run through hvadam directly
    state_dtype: torch.dtype | None = None  # HVAdam's state_dtype (None: the default)
    # In the comparison every study runs by default; the others are run by name (--optimizers).
    default: bool = True


def _groups_with(groups: ParamGroups, **options) -> ParamGroups:
    return [{**group, **options} for group in groups]


def _pytorch_optimizer(name: str):
    import pytorch_optimizer

    return getattr(pytorch_optimizer, name)


def _lookahead(groups: ParamGroups, beta2: float) -> Optimizer:
    lookahead = _pytorch_optimizer("Lookahead")
    return lookahead(torch.optim.Adam(groups, betas=(0.9, beta2)), k=5, alpha=0.5)


def _hvadam(
    variant: str, state_dtype: torch.dtype | None = None
) -> Callable[[ParamGroups, float], Optimizer]:
    def build(groups: ParamGroups, beta2: float) -> Optimizer:
        return HVAdam(groups, betas=(0.9, beta2), variant=variant, state_dtype=state_dtype)

    return build


SPECS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        *(
            OptimizerSpec(variant, label, "hvadam", "beta2", _hvadam(variant), variant)
            for variant, label in (
                ("hvadam", "HVAdam"),
                ("hvadam2", "HVAdam² (no restart)"),
                ("hvadam1", "HVAdam¹ (Adam moment)"),
                # Adam's algorithm with HVAdam's ε (1e-16; torch's Adam: 1e-8), which matters
                # where gradients are tiny.
                ("hvadam0", "HVAdam⁰ (Adam, ε 1e-16)"),
            )
        ),
        # The same HVAdam with m, s, v stored in bfloat16 (stochastic rounding): a study of
        # state precision, not another optimizer, so it is not in the default comparison.
        OptimizerSpec(
            "hvadam-bf16", "HVAdam (bf16 state)", "hvadam", "beta2",
            _hvadam("hvadam", torch.bfloat16), "hvadam", torch.bfloat16, default=False,
        ),
        OptimizerSpec(
            "sgd", "SGD (momentum)", "torch.optim", "momentum",
            lambda groups, momentum: torch.optim.SGD(groups, lr=1e-3, momentum=momentum),
        ),
        OptimizerSpec(
            "adam", "Adam", "torch.optim", "beta2",
            lambda groups, beta2: torch.optim.Adam(groups, betas=(0.9, beta2)),
        ),
        OptimizerSpec(
            "adamw", "AdamW (wd 0.01)", "torch.optim", "beta2",
            lambda groups, beta2: torch.optim.AdamW(groups, betas=(0.9, beta2), weight_decay=1e-2),
        ),
        OptimizerSpec(
            "adabelief", "AdaBelief", "pytorch_optimizer", "beta2",
            lambda groups, beta2: _pytorch_optimizer("AdaBelief")(groups, betas=(0.9, beta2)),
        ),
        OptimizerSpec(
            "radam", "RAdam", "torch.optim", "beta2",
            lambda groups, beta2: torch.optim.RAdam(groups, betas=(0.9, beta2)),
        ),
        OptimizerSpec(
            "yogi", "Yogi", "pytorch_optimizer", "beta2",
            lambda groups, beta2: _pytorch_optimizer("Yogi")(groups, betas=(0.9, beta2)),
        ),
        OptimizerSpec(
            "adabound", "AdaBound", "pytorch_optimizer", "beta2",
            lambda groups, beta2: _pytorch_optimizer("AdaBound")(groups, betas=(0.9, beta2)),
        ),
        OptimizerSpec(
            "rmsprop", "RMSprop", "torch.optim", "beta2",
            lambda groups, alpha: torch.optim.RMSprop(groups, alpha=alpha),
        ),
        OptimizerSpec("lookahead", "Lookahead (Adam)", "pytorch_optimizer", "beta2", _lookahead),
    ]
}  # fmt: skip

DEFAULT_OPTIMIZERS = tuple(name for name, spec in SPECS.items() if spec.default)
PAPER_SET = ("sgd", "adam", "adabelief", "hvadam")  # the optimizers of the paper's Figures 1-2


def spec(name: str) -> OptimizerSpec:
    """The registered optimizer called ``name``; ``ValueError`` listing the known ones if none."""
    if name not in SPECS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


def check_names(names: Iterable[str]) -> None:
    """Raise :class:`BenchError` (one line, listing the known ones) at the first unknown name."""
    for name in names:
        try:
            spec(name)
        except ValueError as error:
            raise BenchError(str(error)) from None
