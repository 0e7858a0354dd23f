"""The chunk index: which rows start an action-chunk (semi-Markov) transition, and its τ, R^(τ), d, next row.

The rules of docs/chunk_transitions.md, "Chunk transitions". For a start row t in an episode [b, e),
horizon H:

1. j = first row in [t, min(t+H, e) - 1] with terminal[j]: τ = j - t + 1, d = 1.
2. else if t + H <= e - 1: τ = H, d = 0 (next state row t + H).
3. else: τ = e - 1 - t, d = 0 (next state row e - 1); τ = 0 is not a transition.
4. drop_partial keeps only τ = H or d = 1.

Everything is computed with whole-array operations: no Python loop over rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from offline_chunk.data.returns import return_lower_bounds


@dataclass(frozen=True)
class ChunkIndex:
    """One entry per valid chunk start, all arrays of shape (M,)."""

    start: np.ndarray  # int64: row t where the chunk starts
    episode_begin: np.ndarray  # int64: b, first row of t's episode
    episode_end: np.ndarray  # int64: e, exclusive end of t's episode
    next_row: np.ndarray  # int64: n = min(t + τ, e - 1), the row whose observation follows the chunk
    effective_length: np.ndarray  # int64: τ, number of recorded steps the chunk covers
    chunk_done: np.ndarray  # bool: d, a terminal was reached inside the chunk
    cumulative_reward: np.ndarray  # float32: R^(τ) = Σ_{i<τ} γ^i r[t+i]
    discount_factor: np.ndarray  # float32: γ^τ
    return_lower_bound: np.ndarray  # float32: L_t, the recorded return from t as a bound (returns.py)
    horizon: int
    gamma: float

    def __len__(self) -> int:
        return len(self.start)


def episode_bounds(episode_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (begin, end) of the episode each row belongs to."""
    ends = np.asarray(episode_ends, np.int64)
    begins = np.concatenate([[0], ends[:-1]])
    lengths = ends - begins
    return np.repeat(begins, lengths), np.repeat(ends, lengths)


def _first_terminal_at_or_after(terminal: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each row t, the first j >= t with terminal[j]; len(terminal) where there is none."""
    terminal_rows = np.append(np.flatnonzero(terminal), len(terminal))
    return terminal_rows[np.searchsorted(terminal_rows, rows, side="left")]


def _chunk_returns(reward: np.ndarray, start: np.ndarray, length: np.ndarray, horizon: int, gamma: float):
    """R^(τ) = Σ_{i<τ} γ^i r[t+i], as a masked (M, H) window product (float64 accumulation)."""
    padded = np.concatenate([np.asarray(reward, np.float64), np.zeros(horizon - 1)])
    windows = sliding_window_view(padded, horizon)[start]  # (M, H): r[t], ..., r[t+H-1]
    steps = np.arange(horizon)
    weights = np.where(steps < length[:, None], gamma**steps, 0.0)
    return np.einsum("mh,mh->m", windows, weights)


def build_chunk_index(
    reward: np.ndarray,
    terminal: np.ndarray,
    episode_ends: np.ndarray,
    horizon: int,
    gamma: float,
    drop_partial: bool = True,
    worst_reward: float | None = None,
) -> ChunkIndex:
    """Apply the chunk rules of docs/chunk_transitions.md to every row at once (`worst_reward`: see
    return_lower_bounds)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    rows = np.arange(len(reward), dtype=np.int64)
    begin, end = episode_bounds(episode_ends)

    # Rule 1: the first terminal inside the chunk's recorded window [t, min(t+H, e) - 1].
    first_terminal = _first_terminal_at_or_after(np.asarray(terminal, bool), rows)
    done = first_terminal <= np.minimum(rows + horizon, end) - 1
    # Rules 2 and 3: a full chunk needs its successor row t + H inside the episode.
    length = np.where(done, first_terminal - rows + 1, np.minimum(horizon, end - 1 - rows))

    keep = length >= 1
    if drop_partial:
        keep &= (length == horizon) | done
    start = rows[keep]
    length, done, begin, end = length[keep], done[keep], begin[keep], end[keep]
    returns = _chunk_returns(reward, start, length, horizon, gamma)
    bounds = return_lower_bounds(reward, terminal, episode_ends, gamma, worst_reward)[start]
    return ChunkIndex(
        start=start,
        episode_begin=begin,
        episode_end=end,
        next_row=np.minimum(start + length, end - 1),
        effective_length=length,
        chunk_done=done,
        cumulative_reward=returns.astype(np.float32),
        discount_factor=(float(gamma) ** length.astype(np.float64)).astype(np.float32),
        return_lower_bound=bounds.astype(np.float32),
        horizon=int(horizon),
        gamma=float(gamma),
    )
