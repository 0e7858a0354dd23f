"""What best of N has to choose from (benchmarks/RESULTS.md, QC section): at 256 rows of a checkpoint's store,
N candidate chunks from its generator, their standard deviation across the N (mean over the chunk's
dimensions, in the policy's [-1, 1] units) beside the store's action std, and the spread max - min over the
N of the online critics' mean Q. `--renoise` also samples by multistep consistency sampling (cpql), and
by 5, 10, 20 and 39 Euler steps of the probability-flow ODE with the trained denoiser (`policy.ode_steps`):
what the same network gives when sampled as a diffusion model.

    PYTHONPATH=. .venv/bin/python benchmarks/qc_candidate_diversity.py <checkpoint> [--candidates 8]
        [--renoise]
"""

from __future__ import annotations

import argparse

import torch

from offline_chunk import load_agent
from offline_chunk.checkpoint import read_checkpoint
from offline_chunk.data.dataset import OfflineRLDataset

ROWS, ROW_SEED = 256, 3


def spread_of(agent, obs: torch.Tensor, candidates: torch.Tensor) -> tuple[float, torch.Tensor]:
    q = agent.critic(obs, candidates).mean(0)  # (B, N)
    return candidates.std(dim=1).mean().item(), q.max(1).values - q.min(1).values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--renoise", action="store_true", help="also multistep and ODE sampling (cpql)")
    args = parser.parse_args()
    payload = read_checkpoint(args.checkpoint)
    agent = load_agent(args.checkpoint)
    cfg = payload["config"]
    dataset = OfflineRLDataset(payload["store"]["path"], cfg.horizon, cfg.obs_horizon, cfg.gamma)
    batch = dataset.sampler(ROWS, seed=ROW_SEED).sample()
    torch.manual_seed(0)
    with torch.no_grad():
        obs = agent.network_obs(batch["observations"], None)
        data_std = agent.normalizer.action(batch["actions"]).flatten(0, 1).std(0).mean().item()
        rows = [("as trained", *spread_of(agent, obs, agent.actor.sample_candidates(obs, args.candidates)))]
        if args.renoise:
            num_levels = len(agent.actor.sigmas)
            for level in (num_levels // 3, num_levels // 2, 2 * num_levels // 3):
                agent.actor.sample_steps = [level]
                sigma = float(agent.actor.sigmas[level])
                candidates = agent.actor.sample_candidates(obs, args.candidates)
                rows.append((f"re-noised to sigma {sigma:.3g}", *spread_of(agent, obs, candidates)))
            agent.actor.sample_steps = ()
            for steps in (5, 10, 20, num_levels - 1):
                agent.actor.use_ode(steps)  # policy.ode_steps
                candidates = agent.actor.sample_candidates(obs, args.candidates)
                rows.append((f"ODE, {steps} Euler steps", *spread_of(agent, obs, candidates)))
    print(f"{args.checkpoint}: {ROWS} store rows, N = {args.candidates}, store action std {data_std:.3f}")
    print(
        "| sampling | candidate std across N | Q spread over N: median | 90th percentile |\n|---|---|---|---|"
    )
    for name, std, q_spread in rows:
        print(f"| {name} | {std:.4f} | {q_spread.median():.3f} | {q_spread.quantile(0.9):.3f} |")


if __name__ == "__main__":
    main()
