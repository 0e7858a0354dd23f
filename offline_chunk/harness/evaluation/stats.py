"""Evaluation statistics: the episodes' record, the success rate's Wilson interval, means with normal
intervals, and the summary of a set of episodes."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: the two-sided 95% normal quantile


@dataclass
class Episode:
    episode: int
    seed: int
    success: bool
    episode_return: float
    length: int
    final_reward: float  # the simulator's own reward at the last step (OGBench: −subtasks unsolved)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (E. B. Wilson, "Probable inference, the law of
    succession, and statistical inference", JASA 22(158):209-212, 1927; recommended over the normal
    interval by Brown, Cai & DasGupta, Statistical Science 16(2):101-133, 2001):

        (p + z²/2n ± z √(p(1 - p)/n + z²/4n²)) / (1 + z²/n),   p = successes / n.

    It stays inside [0, 1] and is not empty at p = 0 or 1, where the normal interval collapses."""
    p, q = successes / n, 1 - successes / n
    half_width = z * np.sqrt(p * q / n + z**2 / (4 * n**2))
    # Since (p + z²/2n)² - half_width² = p² (1 + z²/n), the lower bound is p² / (p + z²/2n + half_width),
    # and the upper bound 1 - q² / (q + z²/2n + half_width) by symmetry: the same values without the
    # cancellation of the textbook form, so they are exactly 0 and 1 at p = 0 and p = 1.
    low = p**2 / (p + z**2 / (2 * n) + half_width)
    high = 1 - q**2 / (q + z**2 / (2 * n) + half_width)
    return float(low), float(high)


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float | None, float | None]:
    """Normal-approximation interval for a mean: mean ± z s/√n with the sample standard deviation s
    (ddof = 1). None for fewer than 2 values."""
    if len(values) < 2:
        return None, None
    half_width = z * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half_width), float(values.mean() + half_width)


def summarize(episodes: list[Episode]) -> dict:
    successes = sum(e.success for e in episodes)
    returns = np.array([e.episode_return for e in episodes])
    final_rewards = np.array([e.final_reward for e in episodes])
    lengths = np.array([e.length for e in episodes])
    return {
        "success_rate": successes / len(episodes),
        "success_ci95": wilson_interval(successes, len(episodes)),
        "success_ci_method": "Wilson score interval",
        "return_mean": float(returns.mean()),
        "return_ci95": mean_interval(returns),
        "return_ci_method": "normal approximation: mean ± 1.96 s/sqrt(n)",
        "final_reward_mean": float(final_rewards.mean()),
        "final_reward_ci95": mean_interval(final_rewards),
        "length_mean": float(lengths.mean()),
        "length_min": int(lengths.min()),
        "length_max": int(lengths.max()),
    }
