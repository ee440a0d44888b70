"""Train a small network with HVAdam under FSDP2 (``fully_shard``), save a DCP checkpoint, and
resume from it.

Run: torchrun --nproc_per_node=2 examples/fsdp_train.py
(gloo on CPU; NCCL, one GPU per process, when CUDA is available.)

HVAdam needs nothing FSDP-specific: its parameters are DTensors, so it steps their local shards
and all-reduces the scope's three inner products over the mesh dimension that shards them; every
rank takes the same restart / hidden-step decision, and the result is the single-process one.
"""

import os
import shutil
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from hvadam import HVAdam

STEPS = 200


def make_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    ).to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def batch(step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of step ``step``'s global batch of 256."""
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x @ torch.linspace(-1, 1, 8).unsqueeze(1))
    rows = slice(dist.get_rank(), None, dist.get_world_size())
    return x[rows].to(device), y[rows].to(device)


def train(model: nn.Module, opt: HVAdam, steps: range, device: torch.device) -> float:
    for step in steps:
        x, y = batch(step, device)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    model = make_model(device)
    opt = HVAdam(model.parameters(), lr=1e-2)
    loss = train(model, opt, range(STEPS // 2), device)
    if rank == 0:
        print(f"step {STEPS // 2}: loss {loss:.4f}, {opt.diagnostics()[0]}")

    # Save (every rank writes its shards), then restore into a fresh model and optimizer.
    checkpoint = [tempfile.mkdtemp(prefix="hvadam-fsdp-") if rank == 0 else None]
    dist.broadcast_object_list(checkpoint)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.save(state, checkpoint_id=checkpoint[0])

    model = make_model(device)
    opt = HVAdam(model.parameters(), lr=1e-2)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=checkpoint[0])
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    if rank == 0:
        print(f"resumed from {checkpoint[0]}: {opt.diagnostics()[0]}")

    loss = train(model, opt, range(STEPS // 2, STEPS), device)
    if rank == 0:
        print(f"step {STEPS}: loss {loss:.4f}, {opt.diagnostics()[0]}")
    dist.barrier()
    if rank == 0:
        shutil.rmtree(checkpoint[0])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
