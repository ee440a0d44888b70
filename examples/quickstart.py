"""Train one small network with HVAdam and with Adam, side by side, and print both losses.

Each optimizer gets its best learning rate from the same grid, chosen on a validation split;
the test loss is reported once, at the end. Run: python examples/quickstart.py
"""

import torch
from torch import nn

from hvadam import HVAdam

GRID = (3e-3, 1e-2, 3e-2, 1e-1)
OPTIMIZERS = {"HVAdam": HVAdam, "Adam": torch.optim.Adam}


def make_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3072, 8, generator=generator)
    w = torch.randn(8, 1, generator=generator)
    y = torch.sin(x @ w) + 0.05 * torch.randn(3072, 1, generator=generator)
    return (x[:2048], y[:2048]), (x[2048:2560], y[2048:2560]), (x[2560:], y[2560:])


def train(name: str, lr: float, data, steps: int = 1000) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = OPTIMIZERS[name](model.parameters(), lr=lr)
    x, y = data
    batches = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=batches)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


def loss(model: nn.Module, data) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(data[0]), data[1]).item()


def main() -> None:
    train_data, valid_data, test_data = make_data()
    print(f"{'optimizer':<10}" + "".join(f"{'lr=' + str(lr):>12}" for lr in GRID))
    for name in OPTIMIZERS:
        models = {lr: train(name, lr, train_data) for lr in GRID}
        valid = {lr: loss(model, valid_data) for lr, model in models.items()}
        print(f"{name:<10}" + "".join(f"{valid[lr]:>12.5f}" for lr in GRID) + "   (valid)")
        best = min(valid, key=valid.get)
        print(f"{'':<10}best lr {best}: test loss {loss(models[best], test_data):.5f}")


if __name__ == "__main__":
    main()
