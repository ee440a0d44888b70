"""Bad input gets a clear error naming what is wrong, at construction, not inside step()."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hvadam import HVAdam
from tests.hvadam.problems import assert_unchanged, snapshot


def params():
    return [nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, "lr"),
        ({"lr_hidden": -1.0}, "lr_hidden"),
        ({"eps": -1e-16}, "eps"),
        ({"gamma": -0.1}, "gamma"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, -0.1)}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"scope": "layer"}, "scope"),
        ({"variant": "hvadam3"}, "variant"),
        ({"restart_threshold": "high"}, "restart_threshold"),
        ({"hidden_step_size": (6.0,)}, "hidden_step_size"),
        ({"hidden_step_size": (6.0, float("inf"))}, "hidden_step_size"),
        ({"state_dtype": torch.int32}, "state_dtype"),
        ({"state_dtype": torch.float16}, "state_dtype"),
        ({"fixed_decay": True}, "fixed_decay"),
        ({"foreach": True, "fused": True}, "fused"),
        ({"amsgrad": "yes"}, "amsgrad"),
        # Non-finite values (issue 12, point 6): each made NaN at step 1, or a step of 3162.
        ({"lr": float("inf")}, "lr"),
        ({"lr": torch.tensor(float("inf"))}, "lr"),
        ({"lr_hidden": float("inf")}, "lr_hidden"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"eps": float("inf")}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"gamma": float("inf")}, "gamma"),
        ({"restart_threshold": float("inf")}, "restart_threshold"),
        ({"restart_threshold": float("nan")}, "restart_threshold"),
        # b_t = 10^50 at every δ: inf in a float32 scope.
        ({"hidden_step_size": (0.0, 50.0)}, "hidden_step_size"),
        ({"hidden_step_size": (45.0, -3.0)}, "hidden_step_size"),
        # Flags are bools, all of them (maximize=1 was refused, fused=1 accepted).
        ({"fused": 1}, "fused"),
        ({"foreach": 0}, "foreach"),
        ({"maximize": 1}, "maximize"),
        # Options beyond the paper.
        ({"cosine_beta": 1.0}, "cosine_beta"),
        ({"cosine_beta": -0.5}, "cosine_beta"),
        ({"second_moment_cap": 0.0}, "second_moment_cap"),
        ({"second_moment_cap": float("inf")}, "second_moment_cap"),
        ({"bias_corrected_step": "yes"}, "bias_corrected_step"),
    ],
)
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        HVAdam(params(), **kwargs)


def test_invalid_group_option_is_rejected_and_the_group_not_added():
    opt = HVAdam(params())
    with pytest.raises(ValueError, match="^lr"):
        opt.add_param_group({"params": params(), "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_global_scope_groups_must_agree_on_scope_options():
    with pytest.raises(ValueError, match="^betas"):
        HVAdam(
            [
                {"params": params(), "betas": (0.9, 0.999)},
                {"params": params(), "betas": (0.9, 0.99)},
            ],
            scope="global",
        )
    with pytest.raises(ValueError, match="^cosine_beta"):
        HVAdam([{"params": params(), "cosine_beta": 0.5}, {"params": params()}], scope="global")
    # β1 and the second-moment cap are per tensor, so they may differ.
    HVAdam([{"params": params(), "second_moment_cap": 1.0}, {"params": params()}], scope="global")
    HVAdam(
        [{"params": params(), "betas": (0.9, 0.999)}, {"params": params(), "betas": (0.5, 0.999)}],
        scope="global",
    )


def test_sparse_gradients_raise_naming_the_parameter_and_the_alternative():
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = HVAdam(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"sparse.*parameter 0 of param group 0.*SparseAdam"):
        opt.step()


def test_sparse_error_uses_parameter_names_when_given():
    embedding = nn.Embedding(10, 4, sparse=True)
    opt = HVAdam(embedding.named_parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="'weight'"):
        opt.step()


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.zeros(3, dtype=torch.int64), "floating or complex"),
        (torch.zeros(3, dtype=torch.complex32), "complex32"),
    ],
)
def test_unsupported_parameter_dtypes_are_refused(tensor, message):
    with pytest.raises(ValueError, match=message):
        HVAdam([tensor])


def test_state_dtype_with_complex_params_is_refused():
    with pytest.raises(ValueError, match="^state_dtype"):
        HVAdam([torch.zeros(3, dtype=torch.complex64)], state_dtype=torch.bfloat16)


# ---------------------------------------------------------------- a failed step changes nothing


def stepped(params, **options) -> HVAdam:
    """An optimizer that has taken two steps on ``params`` (so it has state to lose)."""
    opt = HVAdam(params, lr=1e-2, **options)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


def test_meta_and_cpu_params_in_one_scope_raise_before_any_change():
    """Issue 12, point 8: `Cannot copy out of meta tensor` came after the cpu parameter's
    step and momentum had already advanced."""
    cpu = nn.Parameter(torch.zeros(3))
    meta = nn.Parameter(torch.zeros(3, device="meta"))
    opt = HVAdam([cpu, meta])
    cpu.grad, meta.grad = torch.ones(3), torch.ones(3, device="meta")
    with pytest.raises(ValueError, match=r"^params: a scope mixes meta tensors"):
        opt.step()
    assert cpu not in opt.state and torch.equal(cpu.detach(), torch.zeros(3))


@pytest.mark.parametrize(
    "break_it, error, message",
    [
        (
            lambda ps, opt: setattr(ps[1], "grad", torch.ones(4).to_sparse()),
            RuntimeError,
            r"sparse",
        ),
        (
            lambda ps, opt: opt.state[ps[1]].__setitem__("exp_avg", torch.zeros(5)),
            ValueError,
            r"state 'exp_avg' has shape \(5,\)",
        ),
        (  # the model moved after the optimizer stepped
            lambda ps, opt: opt.state[ps[1]].__setitem__(
                "exp_avg", opt.state[ps[1]]["exp_avg"].to("meta")
            ),
            ValueError,
            r"state 'exp_avg' is on meta",
        ),
        (
            lambda ps, opt: opt.state[ps[1]].__setitem__(
                "exp_avg", opt.state[ps[1]]["exp_avg"].double()
            ),
            ValueError,
            r"state 'exp_avg' is torch.float64",
        ),
    ],
    ids=["sparse_grad", "state_shape", "state_device", "state_dtype"],
)
@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}], ids=["single", "foreach"])
def test_a_step_that_raises_names_the_parameter_and_changes_nothing(break_it, error, message, path):
    torch.manual_seed(0)
    params = [
        nn.Parameter(torch.randn(3)),
        nn.Parameter(torch.randn(4)),
        nn.Parameter(torch.randn(2)),
    ]
    opt = stepped(params, **path)
    for p in params:
        p.grad = torch.randn_like(p)
    break_it(params, opt)
    before = snapshot(opt, params)
    names_it = rf"(parameter 1 of param group 0.*{message}|{message}.*parameter 1 of param group 0)"
    with pytest.raises(error, match=names_it):
        opt.step()
    assert_unchanged(before, snapshot(opt, params))


def _move_state(p, opt, device):
    for key, value in opt.state[p].items():
        if torch.is_tensor(value) and value.dim() > 0:
            opt.state[p][key] = value.to(device)


def _change_dtype(p, opt, dtype):
    p.data, p.grad = p.data.to(dtype), p.grad.to(dtype)


# What can go wrong with one parameter between two steps. HVAdam creates, moves and loads a
# parameter's state tensors together, so the step checks them through exp_avg alone.
BREAKS = {
    "sparse_grad": lambda p, opt: setattr(p, "grad", p.grad.to_sparse()),
    "exp_avg_shape": lambda p, opt: opt.state[p].__setitem__("exp_avg", torch.zeros(7, 7)),
    "state_on_meta": lambda p, opt: _move_state(p, opt, "meta"),
    "param_became_float64": lambda p, opt: _change_dtype(p, opt, torch.float64),
}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    sizes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=3),
    path=st.sampled_from([{"foreach": False}, {"foreach": True}, {"fused": True}]),
    options=st.sampled_from([{}, {"amsgrad": True}, {"scope": "global"}, {"scope": "tensor"}]),
    steps=st.integers(1, 3),
    damage=st.sampled_from(list(BREAKS)),
    victim=st.integers(0, 8),
)
def test_any_invalid_step_raises_and_changes_nothing(
    eager_fused, sizes, path, options, steps, damage, victim
):
    """Whatever is wrong with one tensor's gradient or state, in any layout and on any path,
    step() raises and leaves every parameter, state entry and option as it was."""
    torch.manual_seed(victim)
    groups = [{"params": [nn.Parameter(torch.randn(n)) for n in group]} for group in sizes]
    params = [p for g in groups for p in g["params"]]
    opt = HVAdam(groups, lr=1e-2, **path, **options)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    BREAKS[damage](params[victim % len(params)], opt)
    before = snapshot(opt, params)
    with pytest.raises((ValueError, RuntimeError)):
        opt.step()
    assert_unchanged(before, snapshot(opt, params))
