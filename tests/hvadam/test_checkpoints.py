"""State dicts compose with torch's own machinery (hooks, ``param_names``, ``weights_only``) and
refuse what is not an HVAdam state, before anything changes (issue 12, points 3, 4, 5, 7)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from hvadam import HVAdam
from tests.hvadam.problems import assert_unchanged, snapshot


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4, generator=generator)
    y = x[:, :1].sin()
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def trained(steps: int = 5, **options) -> tuple[nn.Module, HVAdam]:
    model = small_model()
    opt = HVAdam(model.parameters(), lr=1e-2, **options)
    train(model, opt, steps)
    return model, opt


# --------------------------------------------------------------------- point 3: hooks


def test_a_pre_hook_that_returns_a_modified_dict_is_honoured():
    model, opt = trained()
    saved = copy.deepcopy(opt.state_dict())
    fresh_model = copy.deepcopy(model)
    fresh = HVAdam(fresh_model.parameters(), lr=1e-2)

    def halve_momentum(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        for state in state_dict["state"].values():
            state["exp_avg"] = state["exp_avg"] / 2
        return state_dict

    fresh.register_load_state_dict_pre_hook(halve_momentum)
    fresh.load_state_dict(saved)
    first = next(iter(fresh_model.parameters()))
    torch.testing.assert_close(fresh.state[first]["exp_avg"], saved["state"][0]["exp_avg"] / 2)


def test_a_post_hook_that_replaces_state_is_honoured():
    model, opt = trained()
    fresh_model = copy.deepcopy(model)
    fresh = HVAdam(fresh_model.parameters(), lr=1e-2)
    first = next(iter(fresh_model.parameters()))
    replacement = torch.full_like(first, 7.0)

    def replace_momentum(optimizer):
        optimizer.state[first]["exp_avg"] = replacement

    fresh.register_load_state_dict_post_hook(replace_momentum)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[first]["exp_avg"] is replacement


def test_param_names_remap_recipe_resumes_a_reordered_model():
    """torch's documented recipe: a pre-hook maps the saved state onto the optimizer's
    parameters by ``param_names`` (here the new optimizer lists them in another order)."""
    model = small_model()
    opt = HVAdam(model.named_parameters(), lr=1e-2)
    train(model, opt, 5)
    saved = copy.deepcopy(opt.state_dict())

    resumed_model = copy.deepcopy(model)
    reordered = list(reversed(list(resumed_model.named_parameters())))
    resumed = HVAdam(reordered, lr=1e-2)

    def by_name(optimizer, state_dict):
        saved_group = state_dict["param_groups"][0]
        saved_id = dict(zip(saved_group["param_names"], saved_group["params"]))
        names = optimizer.param_groups[0]["param_names"]
        return {
            "state": {i: state_dict["state"][saved_id[name]] for i, name in enumerate(names)},
            "param_groups": [{**saved_group, "params": list(range(len(names))),
                              "param_names": names}],
        }  # fmt: skip

    resumed.register_load_state_dict_pre_hook(by_name)
    resumed.load_state_dict(saved)
    train(model, opt, 5)
    train(resumed_model, resumed, 5)
    # The scope's sums now add the tensors in another order: equal up to round-off.
    torch.testing.assert_close(flat(model), flat(resumed_model), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ point 4: foreign state dicts


def test_a_state_dict_of_torch_adam_is_refused_naming_the_keys():
    model = small_model()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, adam, 8)
    opt = HVAdam(model.parameters(), lr=1e-2)
    train(model, opt, 1)
    before = snapshot(opt, list(model.parameters()))
    with pytest.raises(ValueError, match=r"not an HVAdam state.*exp_avg_sq.*second_moment"):
        opt.load_state_dict(adam.state_dict())
    assert_unchanged(before, snapshot(opt, list(model.parameters())))


def test_keys_a_wrapper_adds_to_the_state_are_kept():
    """Wrappers such as timm's Lookahead keep buffers in the wrapped optimizer's state: a
    state with HVAdam's moments and extra keys is HVAdam's, and loads as torch's optimizers
    load it, extra keys included."""
    model, opt = trained()
    for p in model.parameters():
        opt.state[p]["slow_weights"] = p.detach().clone()
    saved = copy.deepcopy(opt.state_dict())
    resumed_model = small_model()
    resumed = HVAdam(resumed_model.parameters(), lr=1e-2)
    resumed.load_state_dict(saved)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(resumed.state[q]["slow_weights"], opt.state[p]["slow_weights"])
    train(resumed_model, resumed, 2)  # and it steps


def test_a_state_of_the_wrong_shape_is_refused():
    model, opt = trained()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][0]["hidden_vector"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0.*'hidden_vector'"):
        HVAdam(small_model().parameters()).load_state_dict(saved)


# ------------------------------------------------------------ point 5: options on loading


@pytest.mark.parametrize(
    "name, value",
    [
        ("lr", -1.0),
        ("betas", (1.5, 0.9)),
        ("eps", -5.0),
        ("variant", "bogus"),
        ("lr", float("nan")),
    ],
)
def test_invalid_options_in_a_loaded_dict_are_refused_and_nothing_changes(name, value):
    model, opt = trained()
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0][name] = value
    fresh_model = small_model(seed=1)
    fresh = HVAdam(fresh_model.parameters(), lr=3e-3)
    train(fresh_model, fresh, 2)
    before = snapshot(fresh, list(fresh_model.parameters()))
    with pytest.raises(ValueError, match=rf"^{name}\b.*loaded state dict"):
        fresh.load_state_dict(saved)
    assert_unchanged(before, snapshot(fresh, list(fresh_model.parameters())))


def test_options_missing_from_an_older_dict_keep_the_constructed_values():
    model, opt = trained(gamma=0.1, restart_threshold=0.3)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["gamma"], group["restart_threshold"]
    fresh = HVAdam(copy.deepcopy(model).parameters(), lr=1e-2, gamma=0.1, restart_threshold=0.3)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["gamma"] == 0.1
    assert fresh.param_groups[0]["restart_threshold"] == 0.3


# --------------------------------------------------- point 7: weights_only with a callable


def steep_hidden_step(delta: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, delta * 8 - 3)


def test_a_callable_hidden_step_size_checkpoint_loads_with_weights_only():
    model, opt = trained(hidden_step_size=steep_hidden_step, restart_threshold=0.5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    train(model, opt, 5)  # the uninterrupted run

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # the default since torch 2.6, and HF's
    assert "steep_hidden_step" in saved["param_groups"][0]["hidden_step_size"]
    resumed = HVAdam(resumed_model.parameters(), lr=1e-2, hidden_step_size=steep_hidden_step)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["hidden_step_size"] is steep_hidden_step
    train(resumed_model, resumed, 5)
    assert torch.equal(flat(model), flat(resumed_model))

    with pytest.raises(ValueError, match=r"^hidden_step_size: .*steep_hidden_step.*construct"):
        HVAdam(model.parameters(), lr=1e-2).load_state_dict(saved)


def test_state_dict_round_trips_through_weights_only_with_every_option_kind():
    model, opt = trained(
        state_dtype=torch.bfloat16, lr_hidden=torch.tensor(5e-3), amsgrad=True, scope="tensor"
    )
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = HVAdam(copy.deepcopy(model).parameters(), lr=1e-2, state_dtype=torch.bfloat16)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["state_dtype"] == torch.bfloat16
    first = next(iter(fresh.state.values()))
    assert first["exp_avg"].dtype == torch.bfloat16
