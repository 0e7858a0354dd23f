"""Monte-Carlo returns of the recorded behaviour, every row at once, and the lower bound they give on Q.

    G_t = Σ_{i>=0} γ^i r_{t+i}, up to and including the first terminal at or after t, or to the
          episode's last row (a truncated end e: the unseen tail γ^{e−t} V(s_e) is missing).

`q_analysis` puts G beside Q; `return_lower_bounds` turns G into a bound a critic target may use.
"""

from __future__ import annotations

import numpy as np


def reverse_linear_scan(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """y_t = x_t + coef_t · y_{t+1} for every t at once (y_N = 0), in float64.

    A Hillis–Steele scan in ⌈log2 N⌉ whole-array steps: after the step with offset s, y[t] holds the sum
    over the window [t, t + 2s) and c[t] the product of coef over that window, so the window starting at
    t + s is joined by y[t] += c[t] · y[t + s]. A zero in coef cuts the sum exactly (a segment reset)."""
    y = np.array(x, dtype=np.float64)
    c = np.array(coef, dtype=np.float64)
    offset = 1
    while offset < len(y):
        y[:-offset] += c[:-offset] * y[offset:]
        c[:-offset] = c[:-offset] * c[offset:]
        offset *= 2
    return y


def _continuation(terminal: np.ndarray, last_row: np.ndarray, gamma: float) -> np.ndarray:
    """γ where the return from t continues into t + 1, 0 after a terminal or an episode's last row."""
    return np.where(terminal | last_row, 0.0, float(gamma))


def _last_rows(episode_ends: np.ndarray, num_rows: int) -> np.ndarray:
    last_row = np.zeros(num_rows, bool)
    last_row[np.asarray(episode_ends) - 1] = True
    return last_row


def monte_carlo_returns(
    reward: np.ndarray, terminal: np.ndarray, episode_ends: np.ndarray, gamma: float
) -> np.ndarray:
    """G_t = r_t + γ G_{t+1} with G_{t+1} = 0 after a terminal row or an episode's last row, every row."""
    terminal = np.asarray(terminal, bool)
    continuation = _continuation(terminal, _last_rows(episode_ends, len(reward)), gamma)
    return reverse_linear_scan(reward, continuation)


def unseen_tail_weights(terminal: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    """γ^{e−t} where the return from t runs into a truncated end e (no terminal in [t, e)), else 0.

    This is the return of a reward γ received at the last row of each truncated episode (standing for the
    unseen V(s_e), discounted one step), so it uses the same scan and the same resets as G."""
    terminal = np.asarray(terminal, bool)
    last_row = _last_rows(episode_ends, len(terminal))
    truncated_end = last_row & ~terminal
    return reverse_linear_scan(
        np.where(truncated_end, float(gamma), 0.0), _continuation(terminal, last_row, gamma)
    )


def return_lower_bounds(
    reward: np.ndarray,
    terminal: np.ndarray,
    episode_ends: np.ndarray,
    gamma: float,
    worst_reward: float | None = None,
) -> np.ndarray:
    """L_t = G_t + γ^{e−t} · min(r) / (1 − γ) at every row: the recorded return, with the unseen tail of a
    truncated episode valued as the store's worst reward received forever (−inf for γ = 1). `worst_reward`
    stands for min(r) where these rows are part of a larger store (a replay indexing episode by episode).

    In a deterministic simulator replaying the recorded actions from s_t collects G_t, so the optimal value
    of the recorded chunk is at least L_t (where no reward falls below the store's minimum). MCAC (Wilcox
    et al., NeurIPS 2022) raises critic targets to this bound: y = max(y_Bellman, L_t), which carries the
    value of a recorded success back along its whole approach at once instead of one backup at a time."""
    reward = np.asarray(reward, np.float64)
    tail_weight = unseen_tail_weights(terminal, episode_ends, gamma)
    worst = reward.min() if worst_reward is None else worst_reward
    if gamma < 1.0:
        tail = tail_weight * (worst / (1.0 - gamma))
    else:
        tail = np.where(tail_weight > 0.0, -np.inf, 0.0)
    return monte_carlo_returns(reward, terminal, episode_ends, gamma) + tail
