"""One GAN run: the optimizer under test drives both networks; the generator is scored on
validation along the way and on validation and test at the end; checkpoints let a killed run
resume."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from hvadam_bench.training import (
    Checkpointer,
    Trial,
    make_optimizer,
    rng_state,
    seed_everything,
    set_rng_state,
)
from hvadam_bench.workloads.gan_problems import Budget, Problem

CLIP = 0.01  # WGAN's weight clipping (Arjovsky et al.)
GRADIENT_PENALTY = 10.0  # WGAN-GP's λ (Gulrajani et al.)
# Every optimizer's first-moment coefficient (β1 of the adaptive methods, SGD's momentum):
# 0.5, as in GAN practice and the paper's GAN code; 0.9 makes the two-player game oscillate.
GAN_BETA1 = 0.5


# ---- one GAN run -----------------------------------------------------------------------------


def critic_loss(gan: str, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor):
    """WGAN and WGAN-GP: E[D(fake)] - E[D(real)] (+ λ·gradient penalty); SN-GAN: hinge loss."""
    if gan == "sngan":
        return (
            torch.relu(1 - critic(real)).mean() + torch.relu(1 + critic(fake)).mean()
        )  # fmt: skip
    loss = critic(fake).mean() - critic(real).mean()
    if gan == "wgan-gp":
        mix = torch.rand(len(real), *[1] * (real.ndim - 1)).to(real)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
        loss = loss + GRADIENT_PENALTY * (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return loss


def gan_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The shared registry's optimizer ``name`` at ``lr`` (β2 0.999), with its first-moment
    coefficient set to :data:`GAN_BETA1`: β1 where it has betas, SGD's momentum. RMSprop has
    neither and is left as it is; Lookahead shares its inner Adam's groups."""
    optimizer = make_optimizer(name, params, lr)
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (GAN_BETA1, group["betas"][1])
        elif group.get("momentum"):
            group["momentum"] = GAN_BETA1
    return optimizer


def _evaluation_seed(seed: int, split: str) -> int:
    return 1_000_003 * (seed + 1) + {"valid": 1, "test": 2}[split]


@torch.no_grad()
def generate(generator: nn.Module, problem: Problem, count: int, seed: int) -> torch.Tensor:
    """``count`` samples from fixed noise (its own RNG: training's is untouched), on CPU."""
    noise = torch.randn(count, problem.noise_dim, generator=torch.Generator().manual_seed(seed))
    was_training = generator.training
    generator.eval()
    chunks = [generator(part.to(problem.device)).float().cpu() for part in noise.split(500)]
    generator.train(was_training)
    return torch.cat(chunks)


def _failed_run(curve: list, reason: str) -> dict:
    return {
        "valid": math.nan,
        "test": None,
        "diverged": True,
        "reason": reason,
        "curve": curve,
        "metric_modes_covered": None,
        "metric_high_quality": None,
    }


GAN_CHECKPOINT_KEYS = (
    "generator", "critic", "generator_optimizer", "critic_optimizer", "rng", "iteration", "curve"
)  # fmt: skip


def train_gan(trial: Trial, checkpointer: Checkpointer, problem: Problem) -> dict:
    """Train one GAN (``trial.task`` is ``<dataset>-<gan>``) with ``trial.optimizer`` at
    ``trial.lr`` for both networks; score the generator on validation along the way and on
    validation and test at the end. Resumes from ``checkpointer``'s last state."""
    gan = trial.task.split("-", 1)[1]
    budget, device = problem.budget, problem.device
    started = time.process_time()
    seed_everything(trial.seed)
    generator = problem.generator(gan).to(device)
    critic = problem.critic(gan).to(device)
    generator_optimizer = gan_optimizer(trial.optimizer, generator.parameters(), trial.lr)
    critic_optimizer = gan_optimizer(trial.optimizer, critic.parameters(), trial.lr)
    start, curve = 0, []
    state = checkpointer.load(required=GAN_CHECKPOINT_KEYS)
    if state is not None:
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        generator_optimizer.load_state_dict(state["generator_optimizer"])
        critic_optimizer.load_state_dict(state["critic_optimizer"])
        set_rng_state(state["rng"])
        start, curve = state["iteration"], state["curve"]
    every = max(1, budget.iterations // budget.evaluations)
    valid_seed = _evaluation_seed(trial.seed, "valid")
    for iteration in range(start, budget.iterations):
        critic.requires_grad_(True)
        for _ in range(budget.critic_steps):
            real = problem.real_batch(budget.batch)
            noise = torch.randn(budget.batch, problem.noise_dim).to(device)
            with torch.no_grad():
                fake = generator(noise)
            loss = critic_loss(gan, critic, real, fake)
            if not torch.isfinite(loss):
                return _failed_run(curve, f"critic loss not finite at iteration {iteration}")
            critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            critic_optimizer.step()
            if gan == "wgan":
                with torch.no_grad():
                    for parameter in critic.parameters():
                        parameter.clamp_(-CLIP, CLIP)
        critic.requires_grad_(False)  # the generator's step needs no critic gradients
        noise = torch.randn(budget.batch, problem.noise_dim).to(device)
        loss = -critic(generator(noise)).mean()
        if not torch.isfinite(loss):
            return _failed_run(curve, f"generator loss not finite at iteration {iteration}")
        generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        generator_optimizer.step()
        if (iteration + 1) % every == 0 or iteration + 1 == budget.iterations:
            fake = generate(generator, problem, budget.curve_samples, valid_seed)
            if not torch.isfinite(fake).all():
                return _failed_run(curve, f"generator output not finite at {iteration + 1}")
            curve.append(problem.score(fake, "valid")["score"])
            checkpointer.save(
                {
                    "generator": generator.state_dict(),
                    "critic": critic.state_dict(),
                    "generator_optimizer": generator_optimizer.state_dict(),
                    "critic_optimizer": critic_optimizer.state_dict(),
                    "rng": rng_state(),
                    "iteration": iteration + 1,
                    "curve": curve,
                }
            )
    scores = {}
    for split in ("valid", "test"):
        fake = generate(
            generator, problem, budget.eval_samples, _evaluation_seed(trial.seed, split)
        )
        if not torch.isfinite(fake).all():
            return _failed_run(curve, "generator output not finite at the end")
        scores[split] = problem.score(fake, split)
    test = scores["test"]
    return {
        "valid": scores["valid"]["score"],
        "test": test["score"],
        "diverged": False,
        "curve": curve,
        "metric_modes_covered": test.get("modes_covered"),
        "metric_high_quality": test.get("high_quality"),
        "samples": problem.keepsake(fake) if trial.phase == "final" else [],
        "cpu_seconds": round(time.process_time() - started, 2),
    }


def curve_iterations(budget: Budget) -> list[int]:
    """The generator iterations at which a run's validation curve is measured."""
    every = max(1, budget.iterations // budget.evaluations)
    points = list(range(every, budget.iterations + 1, every))
    return points if points and points[-1] == budget.iterations else [*points, budget.iterations]
