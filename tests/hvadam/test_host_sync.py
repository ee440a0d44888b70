"""No path reads a device value on the host or copies a host value to the device inside
``step()``: on CUDA either one waits for the device's queue to drain.

Without a GPU the step runs on the ``meta`` device, where reading a value (``.item()``,
``bool()``, ``.tolist()``) raises outright, while a dispatch mode and a watch on the tensor
constructors catch every copy from the host.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hvadam import HVAdam, _fused
from hvadam._common import GroupOptions


class _HostCopies(TorchDispatchMode):
    """Records every op that writes a ``meta`` tensor from a host tensor, except the 0-dim
    host scalars an elementwise op passes to its kernel as an argument (no copy)."""

    COPIES = {"_to_copy", "copy_", "copy", "lift_fresh", "lift_fresh_copy"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        is_copy = func.overloadpacket.__name__ in self.COPIES
        if is_copy and any(t.device.type == "cpu" for t in inputs):
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def watched(monkeypatch):
    """The dispatch mode, with ``torch.tensor``/``torch.as_tensor`` refusing a device target."""
    constructed: list[str] = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu":
                constructed.append(f"torch.{_name}(..., device={device})")
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, guarded)
    mode = _HostCopies()
    with mode:
        yield mode.seen, constructed


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("lr", [1e-3, torch.tensor(1e-3)], ids=["float_lr", "host_tensor_lr"])
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}],
    ids=["defaults", "amsgrad_l2_maximize"],
)
def test_step_on_a_device_never_touches_the_host(foreach, lr, options, watched):
    params = [torch.randn(3, 4, device="meta", requires_grad=True) for _ in range(3)]
    for param in params:
        param.grad = torch.randn(3, 4, device="meta")
    optimizer = HVAdam(params, lr=lr, foreach=foreach, **options)
    for _ in range(3):  # the first step creates state, the second restarts, the third steps
        optimizer.step()
    copies, constructed = watched
    assert copies == [] and constructed == []


@pytest.mark.parametrize("lr", [1e-3, torch.tensor(1e-3)], ids=["float_lr", "host_tensor_lr"])
def test_fused_constants_are_filled_on_the_device(lr, watched):
    options = GroupOptions(
        lr=lr, lr_hidden=lr, beta1=0.9, beta2=0.999, eps=1e-16, gamma=0.0, weight_decay=0.1,
        decay="l2", amsgrad=False, maximize=False, hidden_moment=True, hidden_step=True,
    )  # fmt: skip
    constants, _, _ = _fused._constants(options, torch.empty((), device="meta"))
    assert constants.device.type == "meta"
    copies, constructed = watched
    assert copies == [] and constructed == []
