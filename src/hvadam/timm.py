"""HVAdam in timm's optimizer factory, in one call.

.. code-block:: python

    import hvadam.timm
    from timm.optim import create_optimizer_v2

    hvadam.timm.register()
    opt = create_optimizer_v2(model, "hvadamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    opt = create_optimizer_v2(model, "lookahead_hvadam", lr=1e-3)

:func:`register` adds two names to timm's default registry:

- ``hvadam``: :class:`hvadam.HVAdam` as it is (weight decay as L2 on the gradient, as
  ``torch.optim.Adam``);
- ``hvadamw``: the same with ``decoupled_weight_decay=True`` (AdamW-style decay).

Everything timm's factory adds works as with its own optimizers: the weight-decay and no-decay
param groups, ``layer_decay`` (timm's schedulers scale each group's ``lr`` by its ``lr_scale``;
HVAdam's hidden step follows ``lr`` unless ``lr_hidden`` is given), ``lookahead_`` in front of
the name, ``betas``, ``eps``, ``foreach`` and any other HVAdam keyword passed through.

timm names are split at ``_`` (the part after the last ``_`` is the optimizer), so there is no
name with an underscore here. Each param group is one hidden-vector scope by default, and timm
makes one group per (layer, decay) pair under ``layer_decay``; pass ``scope="global"`` to share
one hidden vector across all of them.

timm is imported only when :func:`register` is called: HVAdam itself depends on torch alone.
"""

from __future__ import annotations

from typing import Any

from hvadam.optimizer import HVAdam

NAMES = ("hvadam", "hvadamw")


def register(registry: Any = None) -> tuple[str, ...]:
    """Register ``hvadam`` and ``hvadamw`` with timm's optimizer factory; returns the names.

    ``registry`` is a ``timm.optim.OptimizerRegistry`` (default: the one behind
    ``timm.optim.create_optimizer_v2``). Calling it again changes nothing."""
    try:
        from timm.optim import OptimInfo, _optim_factory
    except ImportError as error:
        raise ImportError(
            f"hvadam.timm.register() needs timm (pip install timm); importing it failed: {error}"
        ) from error
    if registry is None:
        registry = _optim_factory.default_registry
    infos = (
        OptimInfo(
            name="hvadam",
            opt_class=HVAdam,
            description="HVAdam: Adam with a hidden vector over all dimensions (L2 decay)",
            has_betas=True,
        ),
        OptimInfo(
            name="hvadamw",
            opt_class=HVAdam,
            description="HVAdam with decoupled (AdamW-style) weight decay",
            has_betas=True,
            defaults={"decoupled_weight_decay": True},
        ),
    )
    known = set(registry.list_optimizers())
    for info in infos:
        if info.name in known and registry.get_optimizer_info(info.name) == info:
            continue  # already registered (timm would log a warning when overwriting)
        registry.register(info)
    return NAMES
