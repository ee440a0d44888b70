"""HVAdam on a CUDA device: the foreach (CUDA default) and fused (Triton) paths against the
float64 reference, bfloat16 state, no host-device synchronisation inside ``step()``, and a
training step captured in a CUDA graph. Skipped where no CUDA device is available; the CPU
suite covers the same properties on the CPU (test_reference_agreement.py, test_fused.py,
test_host_sync.py on the ``meta`` device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hvadam import HVAdam
from hvadam._rounding import stochastic_round_bf16
from tests.hvadam.problems import KERNEL_CASES, max_deviation, two_group_valley
from tests.hvadam.reference import ReferenceHVAdam

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The default path on CUDA is foreach (test_cuda_default_path_is_foreach).
PATHS = {"foreach": {"foreach": True}, "fused": {"fused": True}}


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    torch._dynamo.reset()
    yield


def _cuda_params(initial: list[list[np.ndarray]]) -> list[list[torch.Tensor]]:
    return [
        [torch.tensor(p, dtype=torch.float64, device="cuda", requires_grad=True) for p in group]
        for group in initial
    ]


def _host(params: list[list[torch.Tensor]]) -> list[list[np.ndarray]]:
    return [[p.detach().cpu().numpy().copy() for p in group] for group in params]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_cuda_paths_match_reference_to_1e_10(case, path):
    problem = two_group_valley()
    reference = ReferenceHVAdam(problem.initial(), KERNEL_CASES[case])
    params = _cuda_params(problem.initial())
    groups = [
        {"params": group, **config.torch_kwargs(), **PATHS[path]}
        for group, config in zip(params, KERNEL_CASES[case])
    ]
    optimizer = HVAdam(groups)
    worst = 0.0
    for t in range(1, 41):
        reference.step(problem.grads(reference.params, t))
        for group, grads in zip(params, problem.grads(_host(params), t)):
            for param, grad in zip(group, grads):
                param.grad = None if grad is None else torch.tensor(grad, device="cuda")
        optimizer.step()
        worst = max(worst, max_deviation(reference.params, _host(params)))
    assert worst < 1e-10, f"max deviation {worst:.3e}"


def test_cuda_default_path_is_foreach():
    from hvadam.functional import default_implementation

    assert default_implementation([torch.zeros(2, device="cuda")]) == "foreach"


def test_stochastic_rounding_is_the_same_bits_on_cuda_and_cpu():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    step = torch.tensor(11.0)
    on_cpu = stochastic_round_bf16(x, step)
    on_cuda = stochastic_round_bf16(x.cuda(), step.cuda()).cpu()
    assert torch.equal(on_cpu.view(torch.int16), on_cuda.view(torch.int16))


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1)).cuda()
    generator = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(256, 16, device="cuda", generator=generator)
    return net, x, x[:, :1].sin()


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_bf16_state_on_cuda_trains_like_float32_state(fused):
    losses = {}
    for state_dtype in (None, torch.bfloat16):
        net, x, y = _regression()
        optimizer = HVAdam(net.parameters(), lr=1e-2, fused=fused, state_dtype=state_dtype)
        trace = []
        for _ in range(150):
            optimizer.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            optimizer.step()
            trace.append(loss.item())
        losses[state_dtype] = trace
        if state_dtype is not None:
            state = optimizer.state[next(net.parameters())]
            assert state["exp_avg"].dtype == torch.bfloat16
    full, low = losses[None], losses[torch.bfloat16]
    assert low[-1] < 0.1 * low[0]
    assert (low[0] - low[-1]) > 0.9 * (full[0] - full[-1])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}, {"lr": "device_tensor"}],
    ids=["defaults", "amsgrad_l2_maximize", "device_tensor_lr"],
)
def test_step_never_synchronises_with_the_host(path, options):
    net, x, y = _regression()
    if options.get("lr") == "device_tensor":
        options = {"lr": torch.tensor(1e-2, device="cuda")}
    optimizer = HVAdam(net.parameters(), **PATHS[path], **options)
    for _ in range(2):  # state creation and compilation happen outside the check
        optimizer.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        optimizer.step()
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):  # the restart check and hidden step run on every one
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_training_step_captured_in_a_cuda_graph_replays_like_eager(path):
    """Forward, backward and ``step()`` in one CUDA graph, replayed on fresh batches, against
    the same steps run eagerly from the same start (see scripts/cuda_graph_step.py)."""
    from scripts.cuda_graph_step import compare_graph_with_eager

    result = compare_graph_with_eager(PATHS[path], steps=20)
    assert result["captured"], result.get("error")
    assert result["max_param_deviation"] <= 1e-6 * max(1.0, result["max_param_magnitude"])
