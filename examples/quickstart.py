"""Train one small network with HVAdam and with Adam, side by side, and print both losses.

Run: python examples/quickstart.py
"""

import torch
from torch import nn

from hvadam import HVAdam


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))


def main(steps: int = 300) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=generator)
    y = torch.sin(x @ torch.randn(8, 1, generator=generator)) + 0.05 * torch.randn(512, 1)
    models = {"HVAdam": make_model(), "Adam": make_model()}
    optimizers = {
        "HVAdam": HVAdam(models["HVAdam"].parameters(), lr=1e-2),
        "Adam": torch.optim.Adam(models["Adam"].parameters(), lr=1e-2),
    }
    print(f"{'step':>6} " + " ".join(f"{name:>12}" for name in models))
    for step in range(1, steps + 1):
        losses = {}
        for name, model in models.items():
            optimizers[name].zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizers[name].step()
            losses[name] = loss.item()
        if step == 1 or step % 50 == 0:
            print(f"{step:>6} " + " ".join(f"{losses[name]:>12.5f}" for name in models))
    diag = optimizers["HVAdam"].diagnostics()[0]
    print(
        f"HVAdam hidden vector: delta={diag.delta:.4f} delta_hat={diag.delta_hat:.4f} "
        f"b_t={diag.hidden_step_size:.4g} restarts={diag.restart_count}"
    )


if __name__ == "__main__":
    main()
