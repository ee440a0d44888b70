"""The paper's worked example (Table 1), with its erratum (docs/algorithm.md §12): m̂_y at step 2
is +1.2105."""

import pytest
import torch

from hvadam import HVAdam

GRADIENTS = [(5, -3), (-3, 5), (5, -3), (-3, 5), (5, -3)]
M_HAT = [(5, -3), (0.7895, 1.2105), (2.3432, -0.3432), (0.7895, 1.2105), (1.8177, 0.1823)]
HIDDEN = [(5, -3), (1, 1), (1, 1), (1, 1), (1, 1)]


def table1_function(point: torch.Tensor) -> torch.Tensor:
    x, y = point
    return 4 * (x - y).abs() + (x + y).abs()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("foreach", [False, True])
def test_table1_hidden_vector_and_momentum(dtype, foreach):
    point = torch.zeros(2, dtype=dtype, requires_grad=True)
    # lr = 0: the table lists a fixed gradient sequence, independent of where θ goes.
    opt = HVAdam([point], lr=0.0, foreach=foreach)
    for step, (grad, m_hat, hidden) in enumerate(zip(GRADIENTS, M_HAT, HIDDEN), start=1):
        point.grad = torch.tensor(grad, dtype=dtype)
        opt.step()
        state = opt.state[point]
        measured = state["exp_avg"] / (1 - 0.9 ** state["step"])
        assert measured.tolist() == pytest.approx(m_hat, abs=5e-5), f"m̂ at step {step}"
        assert state["hidden_vector"].tolist() == pytest.approx(hidden, abs=5e-5), f"v, step {step}"


def test_table1_gradients_are_the_functions_gradients():
    for point, grad in (((1.0, 0.5), (5, -3)), ((0.5, 1.0), (-3, 5))):
        p = torch.tensor(point, requires_grad=True)
        table1_function(p).backward()
        assert p.grad.tolist() == list(grad)


def test_table1_hidden_vector_found_within_two_steps_on_the_function():
    """On f itself (from a point in the valley), v is parallel to v* = (1, 1) after 2 steps."""
    point = torch.tensor([1.0, 0.7], dtype=torch.float64, requires_grad=True)
    opt = HVAdam([point], lr=0.3)
    for _ in range(2):
        opt.zero_grad()
        table1_function(point).backward()
        opt.step()
    v = opt.state[point]["hidden_vector"]
    assert torch.nn.functional.cosine_similarity(v, torch.ones(2, dtype=v.dtype), dim=0) > 0.999
