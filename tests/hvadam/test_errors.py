"""Bad input gets a clear error naming what is wrong, at construction, not inside step()."""

import pytest
import torch
from torch import nn

from hvadam import HVAdam


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
    # β1 is per tensor, so it may differ.
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
