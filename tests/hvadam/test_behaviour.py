"""The generic behaviours PyTorch's own optimizer suite demands of every optimizer."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from hvadam import HVAdam, _multi_tensor

PATHS = [pytest.param(False, id="single"), pytest.param(True, id="foreach")]


def small_model(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def data(seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g, dtype=dtype)
    return x, (x[:, :1] * x[:, 1:2]).sin() + 0.1 * x[:, 2:3]


def train(model, opt, steps, sign=1.0, scheduler=None):
    x, y = data(dtype=next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        (sign * loss).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def flat(model_or_params) -> torch.Tensor:
    params = (
        model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    )
    return torch.cat([p.detach().reshape(-1) for p in params])


@pytest.mark.parametrize("foreach", PATHS)
def test_loss_goes_down(foreach):
    model = small_model()
    losses = train(model, HVAdam(model.parameters(), lr=1e-2, foreach=foreach), 100)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("foreach", PATHS)
def test_maximize_makes_the_objective_go_up(foreach):
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2, foreach=foreach, maximize=True)
    losses = train(model, opt, 100, sign=-1.0)  # maximize -loss, i.e. minimize loss
    assert losses[-1] < 0.5 * losses[0]
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2, foreach=foreach, maximize=True)
    losses = train(model, opt, 40, sign=1.0)  # maximize the loss itself
    assert losses[-1] > 2 * losses[0]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"amsgrad": True, "weight_decay": 0.1},
        {"decoupled_weight_decay": True, "weight_decay": 0.1, "scope": "tensor"},
        {"variant": "hvadam1", "scope": "global"},
    ],
    ids=["defaults", "amsgrad_l2", "decoupled_tensor", "hvadam1_global"],
)
@pytest.mark.parametrize(
    "dtype, steps, tolerance",
    [(torch.float64, 20, 1e-10), (torch.float32, 3, 1e-5)],
    ids=["float64", "float32"],
)
@pytest.mark.parametrize("chunk_elements", [None, 40], ids=["one_run", "runs_of_40"])
def test_foreach_equals_single_tensor_params_and_state(
    options, dtype, steps, tolerance, chunk_elements, monkeypatch
):
    # HVAdam amplifies round-off (docs/algorithm.md §8.8), so float32 is compared over a short
    # horizon only.
    if chunk_elements is not None:  # foreach calls over several runs of tensors per bucket
        monkeypatch.setattr(_multi_tensor, "CHUNK_ELEMENTS", chunk_elements)
    models = [small_model(dtype=dtype) for _ in range(2)]
    opts = [
        HVAdam(
            [
                {"params": m[0].parameters()},
                {"params": m[2].parameters(), "lr": 3e-2},
            ],
            lr=1e-2,
            foreach=foreach,
            **options,
        )
        for m, foreach in zip(models, (False, True))
    ]
    for model, opt in zip(models, opts):
        train(model, opt, steps)
    close = {"atol": tolerance, "rtol": tolerance}
    torch.testing.assert_close(flat(models[0]), flat(models[1]), **close)
    for p0, p1 in zip(models[0].parameters(), models[1].parameters()):
        s0, s1 = opts[0].state[p0], opts[1].state[p1]
        assert s0.keys() == s1.keys()
        for key in s0:
            torch.testing.assert_close(s0[key], s1[key], **close, msg=key)


@pytest.mark.parametrize("foreach", PATHS)
def test_param_group_lr_and_weight_decay_are_honoured(foreach):
    model = small_model()
    frozen, decayed = model[0], model[2]
    before_frozen = flat(frozen.parameters()).clone()
    opt = HVAdam(
        [
            {"params": frozen.parameters(), "lr": 1e-28},
            {"params": decayed.parameters(), "weight_decay": 0.5, "decoupled_weight_decay": True},
        ],
        lr=1e-2,
        foreach=foreach,
    )
    train(model, opt, 20)
    torch.testing.assert_close(flat(frozen.parameters()), before_frozen, atol=0, rtol=0)

    # With zero gradients, decoupled decay alone shrinks the weights by (1 - lr·wd) per step.
    # (The adaptive step on a zero gradient is exactly zero.)
    param = nn.Parameter(torch.ones(3))
    opt = HVAdam([param], lr=0.1, weight_decay=0.5, decoupled_weight_decay=True, foreach=foreach)
    for _ in range(3):
        param.grad = torch.zeros(3)
        opt.step()
    torch.testing.assert_close(param.detach(), torch.full((3,), 0.95**3))


@pytest.mark.parametrize("foreach", PATHS)
def test_tensor_lr_matches_float_lr(foreach):
    models = [small_model(), small_model()]
    opts = [
        HVAdam(models[0].parameters(), lr=1e-2, foreach=foreach),
        HVAdam(models[1].parameters(), lr=torch.tensor(1e-2), foreach=foreach),
    ]
    for m, o in zip(models, opts):
        train(m, o, 10)
    torch.testing.assert_close(flat(models[0]), flat(models[1]))


@pytest.mark.parametrize("foreach", PATHS)
def test_params_without_grad_are_untouched(foreach):
    model = small_model()
    unused = nn.Parameter(torch.randn(5))
    before = unused.detach().clone()
    opt = HVAdam([*model.parameters(), unused], lr=1e-2, foreach=foreach)
    train(model, opt, 5)
    assert torch.equal(unused.detach(), before)
    assert "exp_avg" not in opt.state[unused]


@pytest.mark.parametrize("foreach", PATHS)
def test_zero_size_and_non_contiguous_params(foreach):
    torch.manual_seed(0)
    base = torch.randn(4, 3)
    non_contiguous = base.t().detach().requires_grad_()  # a (3, 4) leaf with strides (1, 3)
    contiguous = base.t().contiguous().requires_grad_()
    empty_a = torch.zeros(0, 3, requires_grad=True)
    empty_b = torch.zeros(0, 3, requires_grad=True)
    opt_a = HVAdam([non_contiguous, empty_a], lr=1e-2, foreach=foreach)
    opt_b = HVAdam([contiguous, empty_b], lr=1e-2, foreach=foreach)
    assert not non_contiguous.is_contiguous()
    for step in range(10):
        g = torch.randn(3, 4, generator=torch.Generator().manual_seed(step))
        non_contiguous.grad = g.t().contiguous().t()  # same layout as the param
        contiguous.grad = g.clone()
        empty_a.grad = torch.zeros(0, 3)
        empty_b.grad = torch.zeros(0, 3)
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(non_contiguous.detach(), contiguous.detach())
    assert torch.isfinite(opt_a.state[non_contiguous]["hidden_vector"]).all()


@pytest.mark.parametrize("foreach", PATHS)
def test_state_dict_resume_is_bit_identical(foreach):
    kwargs = {"lr": 1e-2, "foreach": foreach, "restart_threshold": 0.5, "amsgrad": True}
    model = small_model()
    opt = HVAdam(model.parameters(), **kwargs)
    train(model, opt, 10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, 15)  # the uninterrupted run

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = small_model(seed=123)  # different init, overwritten by the checkpoint
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = HVAdam(resumed_model.parameters(), **kwargs)
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed_model, resumed_opt, 15)

    assert torch.equal(flat(model), flat(resumed_model))
    assert opt.diagnostics() == resumed_opt.diagnostics()


def test_state_dict_is_deterministic_and_loading_copies():
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2)
    train(model, opt, 3)
    first, second = opt.state_dict(), opt.state_dict()
    assert first["param_groups"] == second["param_groups"]
    for key in first["state"]:
        for name, value in first["state"][key].items():
            assert torch.equal(value, second["state"][key][name])
    snapshot = copy.deepcopy(first)  # state_dict() holds live references, as in torch
    other = HVAdam(small_model().parameters(), lr=1e-2)
    other.load_state_dict(first)
    train(model, opt, 2)  # stepping the source must not leak into the loaded copy
    loaded = other.state_dict()["state"]
    assert torch.equal(loaded[0]["exp_avg"], snapshot["state"][0]["exp_avg"])


def test_deepcopy_steps_like_the_original():
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2)
    train(model, opt, 5)
    model_copy = copy.deepcopy(model)
    opt_copy = HVAdam(model_copy.parameters(), lr=1e-2)
    opt_copy.load_state_dict(copy.deepcopy(opt.state_dict()))
    whole_copy = copy.deepcopy(opt)
    assert whole_copy.diagnostics() == opt.diagnostics()
    train(model, opt, 5)
    train(model_copy, opt_copy, 5)
    assert torch.equal(flat(model), flat(model_copy))


def test_printing_shows_the_options():
    text = repr(HVAdam(small_model().parameters(), lr=2e-3, scope="tensor"))
    assert text.startswith("HVAdam (")
    for fragment in ("lr: 0.002", "scope: tensor", "variant: hvadam", "eps: 1e-16"):
        assert fragment in text


@pytest.mark.parametrize("foreach", PATHS)
def test_lr_scheduler_scales_both_steps(foreach):
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2, foreach=foreach)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch < 5 else 0.0)
    train(model, opt, 5, scheduler=scheduler)
    assert opt.param_groups[0]["lr"] == 0.0
    frozen = flat(model).clone()
    train(model, opt, 5, scheduler=scheduler)  # lr 0 and lr_hidden tied to it: nothing moves
    assert torch.equal(flat(model), frozen)
    assert opt.diagnostics()[0].hidden_step_size > 0  # a hidden step was taken, of size 0·b_t


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1),
    ],
    ids=["step", "cosine", "onecycle", "plateau"],
)
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_common_schedulers_run(make_scheduler, tensor_lr):
    model = small_model()
    opt = HVAdam(model.parameters(), lr=torch.tensor(1e-2) if tensor_lr else 1e-2)
    scheduler = make_scheduler(opt)
    x, y = data()
    for _ in range(12):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss.item())
        else:
            scheduler.step()
    assert torch.isfinite(flat(model)).all()
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) == tensor_lr
    assert float(lr) != 1e-2 or isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_closure_is_called_once_and_its_loss_returned():
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2)
    x, y = data()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss) and loss.item() > 0


def test_step_hooks_run():
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2)
    seen = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    post = opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    train(model, opt, 2)
    pre.remove()
    post.remove()
    train(model, opt, 1)
    assert seen == ["pre", "post", "pre", "post"]


def test_hvadam0_is_adam():
    models = [small_model(), small_model()]
    ours = HVAdam(models[0].parameters(), lr=1e-2, eps=1e-8, variant="hvadam0")
    adam = torch.optim.Adam(models[1].parameters(), lr=1e-2, eps=1e-8)
    train(models[0], ours, 20)
    train(models[1], adam, 20)
    torch.testing.assert_close(flat(models[0]), flat(models[1]))


def test_complex_params_are_real_pairs():
    torch.manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.complex128)
    complex_param = start.clone().requires_grad_()
    real_param = torch.view_as_real(start).clone().requires_grad_()
    target = torch.randn(4, 3, dtype=torch.complex128)
    opts = [HVAdam([complex_param], lr=1e-2), HVAdam([real_param], lr=1e-2)]
    for _ in range(20):
        for opt in opts:
            opt.zero_grad()
        (complex_param - target).abs().pow(2).sum().backward()
        (torch.view_as_complex(real_param) - target).abs().pow(2).sum().backward()
        for opt in opts:
            opt.step()
    torch.testing.assert_close(torch.view_as_real(complex_param.detach()), real_param.detach())


def test_state_layout():
    param = nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    opt = HVAdam([param], amsgrad=True)
    param.grad = torch.randn(3, dtype=torch.bfloat16)
    opt.step()
    state = opt.state[param]
    assert torch.is_tensor(state["step"]) and state["step"].item() == 1
    for key in ("exp_avg", "second_moment", "hidden_vector", "max_second_moment"):
        assert state[key].dtype == torch.float32, key  # fp32 state for bf16 params
    low = nn.Parameter(torch.randn(3, dtype=torch.bfloat16))
    opt_low = HVAdam([low], state_dtype=torch.bfloat16)
    low.grad = torch.randn(3, dtype=torch.bfloat16)
    opt_low.step()
    assert opt_low.state[low]["exp_avg"].dtype == torch.bfloat16

    # Loading keeps HVAdam's dtypes (torch's default policy would cast the state to bf16).
    fresh = HVAdam([nn.Parameter(param.detach().clone())], amsgrad=True)
    fresh.load_state_dict(opt.state_dict())
    loaded = next(iter(fresh.state.values()))
    assert loaded["exp_avg"].dtype == torch.float32
    assert loaded["scope_steps_since_restart"].dtype == torch.int64


def test_older_state_dict_missing_newer_keys_still_loads():
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2)
    train(model, opt, 5)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for key in ("hidden_step_size", "scope", "variant", "state_dtype", "fixed_decay"):
            del group[key]
    for state in old["state"].values():
        for key in ("scope_cosine", "scope_delta_hat", "scope_hidden_step_size"):
            state.pop(key, None)
        state["step"] = float(state["step"])  # very old checkpoints stored plain numbers
    model_copy = copy.deepcopy(model)
    resumed = HVAdam(model_copy.parameters(), lr=1e-2)
    resumed.load_state_dict(old)
    assert resumed.param_groups[0]["scope"] == "group"
    train(model, opt, 5)
    train(model_copy, resumed, 5)
    assert torch.equal(flat(model), flat(model_copy))
