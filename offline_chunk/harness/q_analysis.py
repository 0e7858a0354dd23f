"""Q on recorded demonstrations: the agent's chunk value beside the Monte-Carlo return of the recording.

For every chunk start t of the chosen episodes, `q_on_demos` puts Q(s_t, a_t..a_{t+H-1}) (the recorded
chunk, gathered by the data layer's rules: history padded with the episode's first row, actions padded
with its last) beside the discounted return the recorded behaviour collected from t,

    G_t = Σ_{i>=0} γ^i r_{t+i}, summed up to and including the first terminal at or after t, or to the
    episode's last row.

Q values the chunk followed by the agent's own policy, G the recording's continuation: Q above G means
the agent expects to do better than the demonstrator (or overestimates), Q below G that it undervalues
what the data shows. Where an episode ends by truncation (no terminal) G misses the unseen tail
γ^{e−t} V(s_e): near a truncated end it underestimates the value where rewards are positive (and
overestimates it where they are negative). Those rows carry `tail_weight = γ^{e−t}`, are flagged
`truncated_tail` and are left out of the summary statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from offline_chunk.agents import ChunkAgent
from offline_chunk.checkpoint import agent_from_payload, read_checkpoint
from offline_chunk.compute import pick_device
from offline_chunk.data.batches import gather_chunks
from offline_chunk.data.dataset import OfflineRLDataset
from offline_chunk.data.returns import monte_carlo_returns, unseen_tail_weights
from offline_chunk.data.store import StepData

# A row's return is flagged when its unseen tail weighs more than 1/e, i.e. when the truncated end lies
# within about 1/(1 − γ) steps (the effective horizon: γ^k > 1/e  <=>  k < −1/ln γ ≈ 1/(1 − γ)).
TAIL_FLAG_WEIGHT = math.exp(-1.0)
ROW_FIELDS = ("episode", "row", "step", "q", "mc_return", "terminal", "tail_weight")  # QOnDemos' (M,) arrays


@dataclass(frozen=True)
class QOnDemos:
    """One entry per chunk start of the analysed episodes, in store order; all arrays (M,)."""

    episode: np.ndarray  # int64: episode index in the store
    row: np.ndarray  # int64: store row t
    step: np.ndarray  # int64: t − b, the time step inside the episode
    q: np.ndarray  # float64: Q(s_t, recorded chunk), reduced over the critics by `reduce`
    mc_return: np.ndarray  # float64: G_t
    terminal: np.ndarray  # bool: row t is a terminal (G restarts after it)
    tail_weight: np.ndarray  # float64: γ^{e−t} where G runs into a truncated end e, else 0
    gamma: float
    horizon: int
    obs_horizon: int
    reduce: str

    @property
    def truncated_tail(self) -> np.ndarray:
        """Rows whose G misses a tail weighing more than 1/e: there G is not the value of the behaviour."""
        return self.tail_weight > TAIL_FLAG_WEIGHT

    @property
    def error(self) -> np.ndarray:
        """Q − G per row."""
        return self.q - self.mc_return

    @property
    def episode_ids(self) -> np.ndarray:
        return np.unique(self.episode)

    def rows_of(self, keep: np.ndarray) -> QOnDemos:
        """The entries where `keep` (M,) bool holds."""
        per_row = {f.name: getattr(self, f.name)[keep] for f in fields(self) if f.name in ROW_FIELDS}
        return replace(self, **per_row)

    def __len__(self) -> int:
        return len(self.row)


# --------------------------------------------------------------------------- Q along the demonstrations


def _chosen_episodes(episodes, num_episodes: int) -> np.ndarray:
    """None: all; an int n: the first n; a list: those indices."""
    if episodes is None:
        return np.arange(num_episodes)
    if isinstance(episodes, int | np.integer):
        return np.arange(min(int(episodes), num_episodes))
    chosen = np.unique(np.asarray(episodes, np.int64))
    if len(chosen) and (chosen[0] < 0 or chosen[-1] >= num_episodes):
        raise IndexError(f"episodes {chosen.tolist()} out of range: the store holds {num_episodes} episodes")
    return chosen


def _agent_and_gamma(agent: ChunkAgent | str | Path, gamma: float | None) -> tuple[ChunkAgent, float]:
    """A checkpoint path brings its own γ; an agent object does not carry the run's γ, so it needs one."""
    if isinstance(agent, ChunkAgent):
        if gamma is None:
            raise ValueError(
                "pass gamma (read_checkpoint(ckpt)['config'].gamma), or pass the checkpoint path as agent"
            )
        return agent, float(gamma)
    payload = read_checkpoint(agent)  # read once: the agent and the run's γ
    gamma = payload["config"].gamma if gamma is None else gamma
    return agent_from_payload(payload, pick_device(None)).eval(), float(gamma)


@torch.no_grad()
def _q_values(agent: ChunkAgent, dataset: OfflineRLDataset, ids: np.ndarray, reduce: str, batch_size: int):
    """Q of chunk transitions `ids`, gathered on the host by the data layer and evaluated on the agent's
    device (with the frames of a camera store, handed over in environment units (B, To, H, W, C))."""
    device = next(agent.parameters()).device
    cameras = bool(dataset.tensors.images)
    values = []
    for first in range(0, len(ids), batch_size):
        batch_ids = torch.as_tensor(ids[first : first + batch_size])
        batch = gather_chunks(
            dataset.tensors, batch_ids, dataset.horizon, dataset.obs_horizon, images=cameras
        )
        images = {
            camera: rearrange(frames, "b t c h w -> b t h w c").to(device)
            for camera, frames in batch.get("images", {}).items()
        }
        q = agent.q_value(
            batch["observations"].to(device), batch["actions"].to(device), reduce=reduce, images=images
        )
        values.append(q.double().cpu().numpy())
    return np.concatenate(values) if values else np.zeros(0)


def q_on_demos(
    agent: ChunkAgent | str | Path,
    store: str | Path | StepData,
    episodes: int | list[int] | None = None,
    gamma: float | None = None,
    reduce: str = "min",
    batch_size: int = 4096,
) -> QOnDemos:
    """Q(s_t, recorded chunk) and the Monte-Carlo return G_t at every chunk start of the chosen episodes.

    agent: a ChunkAgent (then `gamma` is required) or a checkpoint path (loaded with `load_agent`; γ from
    its config unless given). store: a store path or StepData. episodes: None for all, an int n for the
    first n, or a list of episode indices. reduce: 'min' or 'mean' over the critic ensemble.

    Chunk starts are those of `OfflineRLDataset(..., drop_partial=False)`: every row except the last row
    of a truncated episode (which has no successor). G is cut at the first terminal at or after t; near a
    truncated end it misses the unseen tail γ^{e−t} V(s_e) (an underestimate for positive rewards; see
    `tail_weight`, `truncated_tail`)."""
    if reduce not in ("min", "mean"):
        raise ValueError(f"reduce must be 'min' or 'mean' (one value per row), got {reduce!r}")
    agent, gamma = _agent_and_gamma(agent, gamma)
    dims = agent.dims
    dataset = OfflineRLDataset(store, dims.horizon, dims.obs_horizon, gamma, drop_partial=False)
    data, start = dataset.data, dataset.index.start
    episode_of_start = np.searchsorted(data.episode_ends, start, side="right")
    ids = np.flatnonzero(np.isin(episode_of_start, _chosen_episodes(episodes, len(data.episode_ends))))
    rows = start[ids]
    episode = episode_of_start[ids]
    return QOnDemos(
        episode=episode,
        row=rows,
        step=rows - data.episode_begins[episode],
        q=_q_values(agent, dataset, ids, reduce, batch_size),
        mc_return=monte_carlo_returns(data.reward, data.terminal, data.episode_ends, gamma)[rows],
        terminal=np.asarray(data.terminal, bool)[rows],
        tail_weight=unseen_tail_weights(data.terminal, data.episode_ends, gamma)[rows],
        gamma=gamma,
        horizon=dims.horizon,
        obs_horizon=dims.obs_horizon,
        reduce=reduce,
    )


# --------------------------------------------------------------------------- summary


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two rows or a constant side (it is undefined there)."""
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _group_means(values: np.ndarray, groups: np.ndarray, used: np.ndarray, num_groups: int) -> np.ndarray:
    """Mean of `values` over the used rows of each group; NaN for a group without one."""
    sums = np.bincount(groups[used], weights=values[used], minlength=num_groups)
    counts = np.bincount(groups[used], minlength=num_groups)
    return np.divide(sums, counts, out=np.full(num_groups, np.nan), where=counts > 0)


def summary_table(result: QOnDemos, complete_only: bool = True) -> list[dict]:
    """One dict per analysed episode, in store order: rows, rows used (complete returns when
    `complete_only`), terminal rows, mean Q, mean G, bias (mean Q − G) and mean |Q − G| over the used rows
    (NaN when an episode has none)."""
    episode_ids, position = np.unique(result.episode, return_inverse=True)
    used = ~result.truncated_tail if complete_only else np.ones(len(result), bool)
    count = len(episode_ids)
    means = {
        "mean_q": _group_means(result.q, position, used, count),
        "mean_return": _group_means(result.mc_return, position, used, count),
        "bias": _group_means(result.error, position, used, count),
        "mean_abs_error": _group_means(np.abs(result.error), position, used, count),
    }
    rows = np.bincount(position, minlength=count)
    rows_used = np.bincount(position[used], minlength=count)
    terminals = np.bincount(position[result.terminal], minlength=count)
    return [
        {
            "episode": int(episode),
            "rows": int(rows[k]),
            "rows_used": int(rows_used[k]),
            "terminals": int(terminals[k]),
            **{name: float(values[k]) for name, values in means.items()},
        }
        for k, episode in enumerate(episode_ids)
    ]


@dataclass(frozen=True)
class QSummary:
    """Agreement of Q with G over the used rows, and the episodes where they disagree most."""

    rows: int
    rows_used: int
    correlation: float
    bias: float  # mean(Q − G)
    rmse: float
    episodes: list[dict]  # summary_table
    worst: list[dict]  # the k episodes with the largest mean |Q − G|, largest first

    def __str__(self) -> str:
        left_out = self.rows - self.rows_used
        lines = [
            f"Q vs Monte-Carlo return over {self.rows_used} of {self.rows} chunk starts in "
            f"{len(self.episodes)} episodes ({left_out} near a truncated end left out)",
            f"  Pearson correlation  {self.correlation:.4f}",
            f"  bias (mean Q - G)    {self.bias:+.4g}",
            f"  RMSE                 {self.rmse:.4g}",
            "Episodes where Q and G disagree most:",
            f"  {'episode':>8} {'used':>6} {'mean Q':>10} {'mean G':>10} {'bias':>10} {'mean |Q-G|':>11}",
        ]
        lines += [
            f"  {e['episode']:>8} {e['rows_used']:>6} {e['mean_q']:>10.4g} {e['mean_return']:>10.4g} "
            f"{e['bias']:>+10.4g} {e['mean_abs_error']:>11.4g}"
            for e in self.worst
        ]
        return "\n".join(lines)


def summarize(result: QOnDemos, k: int = 5, complete_only: bool = True) -> QSummary:
    """Pearson correlation, bias and RMSE of Q against G, and the k episodes that disagree most.

    complete_only (default): statistics over the rows whose G is not cut short by a truncated end
    (`~truncated_tail`); False uses every row. NaN statistics when no row is used."""
    used = ~result.truncated_tail if complete_only else np.ones(len(result), bool)
    error = result.error[used]
    table = summary_table(result, complete_only)
    ranked = sorted((e for e in table if e["rows_used"]), key=lambda e: e["mean_abs_error"], reverse=True)
    return QSummary(
        rows=len(result),
        rows_used=int(used.sum()),
        correlation=_pearson(result.q[used], result.mc_return[used]),
        bias=float(error.mean()) if len(error) else float("nan"),
        rmse=float(np.sqrt(np.mean(error**2))) if len(error) else float("nan"),
        episodes=table,
        worst=ranked[:k],
    )


def summarize_by_outcome(result: QOnDemos, k: int = 5) -> dict[str, QSummary]:
    """`summarize` over the episodes that reach a terminal row (in OGBench's single-task stores, the goal)
    and over those that never do: whether Q tracks the return where success was recorded, and where not."""
    reached = np.isin(result.episode, result.episode[result.terminal])
    return {
        "reach the goal": summarize(result.rows_of(reached), k),
        "never reach it": summarize(result.rows_of(~reached), k),
    }


STEPS_TO_GOAL_EDGES = (0, 10, 25, 50, 100, 200, 400)


def q_by_steps_to_terminal(result: QOnDemos, edges=STEPS_TO_GOAL_EDGES) -> list[dict]:
    """How far from the goal the critic sees it: the rows followed by a terminal in their episode (d =
    steps from row t to that terminal row), in bins [edges[i], edges[i+1]) and a last bin from edges[-1] on;
    per bin the rows, mean d, mean Q and mean G. Under a sparse reward of −1 per step before the goal,
    G = −(1 − γ^d)/(1 − γ): where Q stays near −1/(1 − γ) while G rises, the goal's value has not reached
    states d steps away. Empty bins are left out."""
    terminal_rows = result.row[result.terminal]
    if not len(terminal_rows):
        return []
    following = np.minimum(np.searchsorted(terminal_rows, result.row), len(terminal_rows) - 1)
    next_terminal = terminal_rows[following]
    ahead = (next_terminal >= result.row) & (result.episode[result.terminal][following] == result.episode)
    steps, q, mc_return = (next_terminal - result.row)[ahead], result.q[ahead], result.mc_return[ahead]
    bins = np.searchsorted(np.asarray(edges), steps, side="right") - 1
    table = []
    for k, low in enumerate(edges):
        inside = bins == k
        if inside.any():
            high = edges[k + 1] if k + 1 < len(edges) else None
            table.append(
                {
                    "steps": f"{low}-{high - 1}" if high is not None else f"{low}+",
                    "rows": int(inside.sum()),
                    "mean_steps": float(steps[inside].mean()),
                    "mean_q": float(q[inside].mean()),
                    "mean_return": float(mc_return[inside].mean()),
                }
            )
    return table


# --------------------------------------------------------------------------- plots


def _plot_episode(result: QOnDemos, episode: int, ax) -> None:
    mine = result.episode == episode
    if not mine.any():
        raise ValueError(f"episode {episode} is not in this result (analysed: {result.episode_ids.tolist()})")
    step, q, g = result.step[mine], result.q[mine], result.mc_return[mine]
    ax.plot(step, q, label=f"Q ({result.reduce} over critics)")
    ax.plot(step, g, label="Monte-Carlo return G")
    terminal = result.terminal[mine]
    if terminal.any():
        ax.scatter(step[terminal], g[terminal], marker="x", color="black", zorder=3, label="terminal row")
    truncated = result.truncated_tail[mine]
    if truncated.any():  # the flagged rows are the last ones of the episode: shade them as one span
        ax.axvspan(
            step[truncated].min() - 0.5,
            step[truncated].max() + 0.5,
            color="grey",
            alpha=0.2,
            label="truncated tail (G cut short)",
        )
    ax.set_title(f"episode {episode}")
    ax.set_xlabel("step t in episode")
    ax.set_ylabel("value")
    ax.legend(loc="best", fontsize="small")


def plot_episodes(result: QOnDemos, episodes, ax=None):
    """Q and G against the step t, one axes per episode; terminal rows marked with x, rows whose G misses a
    truncated tail shaded. episodes: an int or a list of episode indices. ax: None (a new figure, one row
    of axes per episode) or as many matplotlib axes as episodes. Returns the list of axes."""
    import matplotlib.pyplot as plt  # an optional dependency (the `notebook` extra): imported on use

    episodes = [episodes] if isinstance(episodes, int | np.integer) else list(episodes)
    new_figure = ax is None
    if new_figure:
        _, ax = plt.subplots(len(episodes), 1, figsize=(8, 2.6 * len(episodes)), squeeze=False)
    axes = list(np.ravel(ax))
    if len(axes) != len(episodes):
        raise ValueError(f"{len(episodes)} episodes need as many axes, got {len(axes)}")
    for episode, axis in zip(episodes, axes, strict=True):
        _plot_episode(result, int(episode), axis)
    if new_figure:
        axes[0].figure.tight_layout()
    return axes
