"""Scopes split across processes: DTensor parameters (FSDP2, tensor parallel) and parameters
partitioned over ranks (``ZeroRedundancyOptimizer``).

docs/algorithm.md §9: the scope is the *logical* parameter set. Each rank computes the ``(c, e, f)``
shares of the pieces it holds; a share is all-reduced over exactly the process groups across
which its tensor is split, and added once where every rank holds the same copy. The kernels
run on local shards only.

* A DTensor's *reduction key* is the process group of each mesh dimension on which it is
  sharded; dimensions on which it is replicated (DDP, HSDP's replica dimension) or partial are
  left out: summing identical copies would only cost an all-reduce, since ``k`` and the cosine
  do not change when ``c, e, f`` are scaled by one factor.
* A plain tensor's key is ``(scope_group,)`` when the optimizer was given one (its tensors are
  partitioned over that group), else ``()``: local.

Nothing here runs, and ``torch.distributed.tensor`` is not imported, unless a default process
group is initialised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor

from hvadam._common import Segment
from hvadam.scope import ReductionKey


def is_active() -> bool:
    """Whether a default process group exists (DTensors and process groups need one)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _is_dtensor(tensor: Tensor) -> bool:
    # Imported on use, not by `import hvadam`: callers run only once a process group exists
    # (is_active()), and the import takes ~0.3 s.
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def reduction_key(tensor: Tensor, scope_group: Any = None) -> ReductionKey:
    """The process groups over which ``tensor``'s share of the inner products is summed.

    For a DTensor: the groups of the mesh dimensions whose placement splits it (``Shard``, and
    FSDP2+TP's strided shard), in mesh order. Several sharded dimensions are reduced one after
    the other: their sum runs over the whole sub-mesh they span. (A single group spanning them
    exists only through the private ``DeviceMesh._flatten``, whose first call is itself a
    collective, so it is not used.)
    """
    if _is_dtensor(tensor):
        dtensor: Any = tensor  # a DTensor: mesh and placements (not typed on Tensor)
        mesh = dtensor.device_mesh
        return tuple(
            mesh.get_group(dim)
            for dim, placement in enumerate(dtensor.placements)
            if not (placement.is_replicate() or placement.is_partial())
        )
    return () if scope_group is None else (scope_group,)


class ScopeLayout(NamedTuple):
    """How a scope's rows are reduced across ranks.

    ``keys``: its non-local reduction keys, in an order every rank computes alike. ``aligned``:
    for each key of sharded DTensors, how many tensors of the scope it covers (every rank holds
    a piece of each, so their rows line up); ``positions``: each such DTensor's row there, by
    ``id``.
    """

    keys: list[ReductionKey]
    aligned: dict[ReductionKey, int]
    positions: dict[int, int]


def scope_layout(params: Iterable[Tensor], scope_group: Any = None) -> ScopeLayout:
    """The :class:`ScopeLayout` of a scope's parameters.

    Taken from every parameter of the scope, with or without a gradient, so that a rank whose
    tensors got no gradient still joins its peers' collectives. ``(scope_group,)`` comes first
    and is present even on a rank that holds no parameter of the scope (ZeRO may leave it none).
    """
    keys: list[ReductionKey] = [] if scope_group is None else [(scope_group,)]
    aligned: dict[ReductionKey, int] = {}
    positions: dict[int, int] = {}
    for param in params:
        key = reduction_key(param, scope_group)
        if key and key not in keys:
            keys.append(key)
        if key and _is_dtensor(param):
            positions[id(param)] = aligned.get(key, 0)
            aligned[key] = positions[id(param)] + 1
    return ScopeLayout(keys, aligned, positions)


def local_segment(segment: Segment, scope_group: Any = None, layout: ScopeLayout | None = None):
    """``segment`` with each DTensor replaced by its local shard and every tensor's reduction
    key (and, given the scope's ``layout``, its row position) filled in. The local shards alias
    the DTensors' storage, so the kernels' in-place updates land in the parameters and their
    state."""
    keys = [reduction_key(param, scope_group) for param in segment.params]
    if layout is not None:
        segment = segment._replace(
            positions=[layout.positions.get(id(param), -1) for param in segment.params]
        )
    dtensors = [i for i, param in enumerate(segment.params) if _is_dtensor(param)]
    if not dtensors:
        return segment._replace(reduction_keys=keys)

    def local(tensors: list[Tensor]) -> list[Tensor]:
        return [cast(Any, t).to_local() if _is_dtensor(t) else t for t in tensors]

    grads = list(segment.grads)
    for i in dtensors:
        param: Any = segment.params[i]  # DTensors
        grad: Any = grads[i]
        if _is_dtensor(grad) and grad.placements != param.placements:
            # e.g. a partial gradient of a replicated parameter: bring it to the parameter's
            # layout, so that the local shards line up element by element.
            grads[i] = grad.redistribute(param.device_mesh, param.placements)
    return segment._replace(
        params=local(segment.params),
        grads=local(grads),
        exp_avgs=local(segment.exp_avgs),
        second_moments=local(segment.second_moments),
        hidden_vectors=local(segment.hidden_vectors),
        max_second_moments=local(segment.max_second_moments),
        reduction_keys=keys,
    )


def collective_device(params: Iterable[Tensor], group: Any) -> torch.device:
    """Where a rank that holds no tensor of a scope places its (zero) share: on the device of
    its other parameters, or, holding none at all, on CUDA for NCCL and on the CPU otherwise."""
    for param in params:
        return param.device
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
