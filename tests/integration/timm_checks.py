"""Checks of hvadam.timm against timm's real optimizer factory, run by test_timm.py in a
subprocess: ``python timm_checks.py [--stub-torchvision]``.

timm imports torchvision at import time (its models and data modules), and the torchvision
release that matches a CPU-only torch build may not import beside it. With
``--stub-torchvision`` every ``torchvision`` module is replaced by an empty stand-in before timm
is imported; none of the code exercised here (``timm.optim``, ``timm.scheduler``, a ViT built
from its config) calls into torchvision. The stand-in lives in this process only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import traceback
import types


def stub_torchvision() -> None:
    import torch

    class Anything(type):
        """A class whose every attribute is another such class (``InterpolationMode.BILINEAR``,
        ``FrozenBatchNorm2d``, ...): enough for module-level code that only names things."""

        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything(name, (torch.nn.Module,), {})

    class StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = Anything(name, (torch.nn.Module,), {})
            setattr(self, name, value)
            return value

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = StubModule(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            module.__version__ = "0.0.0+stub"

    sys.meta_path.insert(0, Finder())


def tiny_vit():
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=5,
    )


def train(optimizer, model, steps, scheduler=None, start=0):
    import torch

    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(8, 3, 16, 16, generator=generator)
        y = torch.randint(0, 5, (8,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step_update(step + 1)


def main() -> None:
    """Runs every check; each reports ``CHECK <name>: ok`` or ``CHECK <name>: FAILED`` and its
    traceback, so that one failure does not hide the others."""
    if "--stub-torchvision" in sys.argv:
        stub_torchvision()
    for check in (factory, lookahead_resume):
        try:
            check()
        except Exception:
            print(f"CHECK {check.__name__}: FAILED")
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"CHECK {check.__name__}: ok")


def factory() -> None:
    import timm
    import torch
    from timm.optim import Lookahead, create_optimizer_v2, list_optimizers
    from timm.scheduler import CosineLRScheduler

    import hvadam.timm
    from hvadam import HVAdam

    assert "hvadam" not in list_optimizers()
    assert hvadam.timm.register() == ("hvadam", "hvadamw")
    assert hvadam.timm.register() == ("hvadam", "hvadamw")  # a second call changes nothing
    assert {"hvadam", "hvadamw"} <= set(list_optimizers())

    # Plain names: timm's decay / no-decay groups, L2 vs decoupled decay, keywords through.
    torch.manual_seed(0)
    model = tiny_vit()
    opt = create_optimizer_v2(model, "hvadam", lr=1e-3, weight_decay=0.05, betas=(0.8, 0.99))
    assert type(opt) is HVAdam
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert all(
        not g["decoupled_weight_decay"] and g["betas"] == (0.8, 0.99) for g in opt.param_groups
    )
    opt = create_optimizer_v2(model, "hvadamw", lr=1e-3, weight_decay=0.05, scope="global")
    assert all(g["decoupled_weight_decay"] and g["scope"] == "global" for g in opt.param_groups)
    opt = create_optimizer_v2(model, "hvadamw", lr=1e-3, decoupled_weight_decay=False)
    assert not any(g["decoupled_weight_decay"] for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    train(opt, model, 5)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))

    # layer_decay: one group per (layer, decay); timm's scheduler sets each lr to its scale.
    torch.manual_seed(0)
    model = tiny_vit()
    opt = create_optimizer_v2(model, "hvadamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert type(opt) is HVAdam
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales == [0.125, 0.25, 0.5, 1.0], scales  # embeddings, 2 blocks, head
    scheduler = CosineLRScheduler(
        opt, t_initial=20, warmup_t=2, warmup_lr_init=1e-5, t_in_epochs=False
    )
    train(opt, model, 4, scheduler)
    base = {group["lr"] / group["lr_scale"] for group in opt.param_groups}
    assert max(base) - min(base) < 1e-12 * max(base), base
    assert 1e-5 < min(base) <= 1e-3  # past the warmup, on the cosine
    assert all(group["lr_hidden"] is None for group in opt.param_groups)  # follows lr
    assert len(opt.diagnostics()) == len(opt.param_groups)

    # lookahead_: timm's Lookahead around HVAdam.
    torch.manual_seed(0)
    model = tiny_vit()
    opt = create_optimizer_v2(model, "lookahead_hvadamw", lr=1e-3, weight_decay=0.01)
    assert type(opt) is Lookahead and type(opt._base_optimizer) is HVAdam
    train(opt, model, 7)  # timm's Lookahead syncs every 6 steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    base = opt._base_optimizer
    assert all("lookahead_slow_buff" in base.state[p] for p in model.parameters())
    print(f"timm {timm.__version__}")


def lookahead_resume() -> None:
    """A Lookahead(HVAdam) checkpoint, loaded into a fresh one, resumes exactly."""
    import torch
    from timm.optim import create_optimizer_v2

    import hvadam.timm

    hvadam.timm.register()

    def lookahead(seed):
        torch.manual_seed(seed)
        net = tiny_vit()
        return net, create_optimizer_v2(net, "lookahead_hvadam", lr=1e-3, weight_decay=0.01)

    model, opt = lookahead(0)
    train(opt, model, 13)  # timm's Lookahead syncs every 6 steps
    whole = [p.detach().clone() for p in model.parameters()]
    model, opt = lookahead(0)
    train(opt, model, 7)
    saved = {"model": model.state_dict(), "opt": opt.state_dict()}
    assert any("lookahead_slow_buff" in state for state in saved["opt"]["state"].values())
    other_model, other = lookahead(1)
    other_model.load_state_dict(saved["model"])
    other.load_state_dict(saved["opt"])
    train(other, other_model, 6, start=7)
    assert all(torch.equal(a, b) for a, b in zip(whole, other_model.parameters(), strict=True))


if __name__ == "__main__":
    main()
