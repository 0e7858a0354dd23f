"""Q on recorded demonstrations: Monte-Carlo returns by hand on a tiny store (mid-episode terminal, terminal
end, truncated end), Q against `agent.q_value` on hand-gathered chunks, the summary, and the notebook run
headless on a tiny checkpoint."""

import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from helpers import tiny_config
from nbclient import NotebookClient

from offline_chunk import load_agent
from offline_chunk.data.chunks import build_chunk_index
from offline_chunk.data.returns import monte_carlo_returns, return_lower_bounds, unseen_tail_weights
from offline_chunk.data.store import StepData, write_store
from offline_chunk.harness.q_analysis import q_on_demos, summarize
from offline_chunk.train import train

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "evaluate_q_on_demos.ipynb"
GAMMA = 0.9  # tiny_config's
# Episode 0: rows 0-5, terminals at rows 2 (mid-episode) and 5 (its end). Episode 1: rows 6-10, truncated.
REWARD = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 1.0, -1.0, 2.0, 3.0]
TERMINAL_ROWS = [2, 5]
EPISODE_ENDS = [6, 11]
# G_t by hand with γ = 0.9, for the chunk starts: every row but 10 (a truncated episode's last row).
#   rows 2, 1, 0: 3;  2 + 0.9·3 = 4.7;  1 + 0.9·4.7 = 5.23          (cut at the terminal row 2)
#   rows 5, 4, 3: 6;  5 + 0.9·6 = 10.4;  4 + 0.9·10.4 = 13.36
#   rows 9..6: 2 + 0.9·3 = 4.7;  −1 + 0.9·4.7 = 3.23;  1 + 0.9·3.23 = 3.907;  0.5 + 0.9·3.907 = 4.0163
EXPECTED_RETURN = [5.23, 4.7, 3.0, 13.36, 10.4, 6.0, 4.0163, 3.907, 3.23, 4.7]
# γ^(e − t) with e = 11 for the truncated episode's rows, 0 where a terminal ends the return.
EXPECTED_TAIL = [0, 0, 0, 0, 0, 0, 0.9**5, 0.9**4, 0.9**3, 0.9**2]


ROWS = np.arange(len(REWARD))
OBS = np.stack([ROWS, ROWS % 3, np.cos(ROWS)], axis=1).astype(np.float32)
ACTION = np.stack([np.sin(ROWS), 0.5 * np.cos(ROWS)], axis=1).astype(np.float32)


def demo_store(path):
    terminal = np.zeros(len(REWARD), bool)
    terminal[TERMINAL_ROWS] = True
    data = StepData(
        observations={"obs": OBS},
        action=ACTION,
        reward=np.array(REWARD, np.float32),
        terminal=terminal,
        episode_ends=np.array(EPISODE_ENDS),
        attrs={"action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]},
    )
    return write_store(data, path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A demo store and a checkpoint trained on it for a few updates (H = 2, To = 2, γ = 0.9)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("q_demos")
    store = demo_store(root / "demos.zarr")
    checkpoint = train(tiny_config("cpql", store, root / "run", "steps=10", "obs_horizon=2"))
    return store, checkpoint


def test_monte_carlo_returns_by_hand_on_the_demo_store(tiny_run):
    store, checkpoint = tiny_run
    result = q_on_demos(load_agent(checkpoint, "cpu"), store, gamma=GAMMA)
    np.testing.assert_array_equal(result.row, np.arange(10))
    np.testing.assert_array_equal(result.episode, [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(result.step, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    np.testing.assert_allclose(result.mc_return, EXPECTED_RETURN, rtol=1e-6)
    np.testing.assert_allclose(result.tail_weight, EXPECTED_TAIL, rtol=1e-12)
    np.testing.assert_array_equal(result.truncated_tail, [False] * 6 + [True] * 4)
    np.testing.assert_array_equal(np.flatnonzero(result.terminal), TERMINAL_ROWS)


def test_returns_and_tail_weights_match_a_plain_loop_on_random_episodes():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=53)
    terminal = rng.random(53) < 0.15
    episode_ends = [5, 6, 20, 41, 53]
    expected_return, expected_tail = np.zeros(53), np.zeros(53)
    begin = 0
    for end in episode_ends:
        for t in range(begin, end):
            for i, row in enumerate(range(t, end)):
                expected_return[t] += GAMMA**i * reward[row]
                if terminal[row]:
                    break
            else:  # no terminal: the return runs into the truncated end
                expected_tail[t] = GAMMA ** (end - t)
        begin = end
    np.testing.assert_allclose(monte_carlo_returns(reward, terminal, episode_ends, GAMMA), expected_return)
    np.testing.assert_allclose(unseen_tail_weights(terminal, episode_ends, GAMMA), expected_tail)


def test_return_lower_bounds_value_a_truncated_tail_as_the_worst_reward_forever():
    terminal = np.isin(ROWS, TERMINAL_ROWS)
    # The store's worst reward is −1: the unseen tail of episode 1 is worth γ^(e−t) · (−1) / (1 − 0.9).
    expected = np.array(EXPECTED_RETURN + [3.0]) + np.array(EXPECTED_TAIL + [0.9]) * -10.0
    bounds = return_lower_bounds(REWARD, terminal, EPISODE_ENDS, GAMMA)
    np.testing.assert_allclose(bounds, expected, rtol=1e-6)
    # The chunk index carries the bound of each start row (H = 2 drops row 9, whose chunk is partial).
    index = build_chunk_index(np.array(REWARD), terminal, np.array(EPISODE_ENDS), 2, GAMMA)
    np.testing.assert_allclose(index.return_lower_bound, expected[index.start], rtol=1e-6)
    # With γ = 1 an unseen tail has no finite bound.
    undiscounted = return_lower_bounds(REWARD, terminal, EPISODE_ENDS, 1.0)
    np.testing.assert_allclose(undiscounted[:6], [6.0, 5.0, 3.0, 15.0, 11.0, 6.0])
    assert np.all(undiscounted[6:] == -np.inf)


def test_q_is_the_agents_value_of_the_recorded_chunk(tiny_run):
    store, checkpoint = tiny_run
    agent = load_agent(checkpoint, "cpu")
    # (start row, history rows (To = 2), chunk rows (H = 2)): history padded with the episode's first row,
    # the chunk padded with its last action.
    cases = [(0, [0, 0], [0, 1]), (5, [4, 5], [5, 5]), (6, [6, 6], [6, 7]), (9, [8, 9], [9, 10])]
    observations = torch.as_tensor(OBS[[history for _, history, _ in cases]])
    chunks = torch.as_tensor(ACTION[[chunk for _, _, chunk in cases]])
    starts = [start for start, _, _ in cases]
    for reduce in ("min", "mean"):
        direct = agent.q_value(observations, chunks, reduce=reduce).double().numpy()
        analysed = q_on_demos(agent, store, gamma=GAMMA, reduce=reduce, batch_size=3).q  # several batches
        np.testing.assert_allclose(analysed[starts], direct, rtol=1e-5, atol=1e-6)


def test_episode_choice_gamma_from_checkpoint_and_summary(tiny_run):
    store, checkpoint = tiny_run
    assert q_on_demos(checkpoint, store, episodes=[1]).row.tolist() == [6, 7, 8, 9]
    first = q_on_demos(checkpoint, store, episodes=1)  # γ = 0.9 from the checkpoint's config
    assert first.gamma == GAMMA and first.row.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(first.mc_return, EXPECTED_RETURN[:6], rtol=1e-6)
    with pytest.raises(IndexError, match="holds 2 episodes"):
        q_on_demos(checkpoint, store, episodes=[2])
    with pytest.raises(ValueError, match="pass gamma"):
        q_on_demos(load_agent(checkpoint, "cpu"), store)

    result = q_on_demos(checkpoint, store)
    summary = summarize(result, k=1)
    # Episode 1's rows all run into its truncated end: only episode 0's six rows count.
    error = result.q[:6] - np.array(EXPECTED_RETURN[:6])
    assert summary.rows == 10 and summary.rows_used == 6
    assert summary.bias == pytest.approx(error.mean())
    assert summary.rmse == pytest.approx(np.sqrt(np.mean(error**2)))
    assert summary.correlation == pytest.approx(np.corrcoef(result.q[:6], EXPECTED_RETURN[:6])[0, 1])
    assert [e["episode"] for e in summary.worst] == [0]
    assert summary.episodes[1]["rows_used"] == 0 and np.isnan(summary.episodes[1]["mean_abs_error"])
    assert summary.episodes[0]["mean_abs_error"] == pytest.approx(np.abs(error).mean())
    assert summary.episodes[0]["terminals"] == 2
    assert "Pearson correlation" in str(summary)


# --------------------------------------------------------------------------- the notebook


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def use_this_interpreter_as_python3_kernel(root: Path, monkeypatch) -> None:
    """Make `python3` the kernel of sys.executable: a spec written here comes first on JUPYTER_PATH, ahead of
    a user-wide or system `python3` spec that may point at an interpreter without offline_chunk."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(root / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    spec = json.loads((root / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable


def executed_notebook(checkpoint, store, tmp_path: Path, monkeypatch):
    """The notebook run headless on a checkpoint and store (kept as executed.ipynb for inspection)."""
    use_this_interpreter_as_python3_kernel(tmp_path / "jupyter", monkeypatch)
    # The inline backend renders figures to PNG without a display (and overrides an MPLBACKEND set outside).
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = f'CHECKPOINT = "{checkpoint}"\nSTORE = "{store}"\nEPISODES = None\nDEVICE = "cpu"'
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")
    return nb


def test_notebook_runs_headless(tiny_run, tmp_path, monkeypatch):
    store, checkpoint = tiny_run
    nb = executed_notebook(checkpoint, store, tmp_path, monkeypatch)
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "Pearson correlation" in text and "10 chunk starts in 2 episodes" in text
    assert re.search(r"0-9\s+6\s", text)  # rows 0-2 and 3-5 lie 2, 1, 0 steps before terminals 2 and 5
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # the per-episode panels, the scatter, Q by the steps to the goal


def test_summaries_by_outcome_split_the_goal_reaching_episodes_from_the_rest():
    """Episodes 0 and 2 reach a terminal, episode 1 never does: each group's correlation is the Pearson
    correlation of its own rows, computed here by hand."""
    from offline_chunk.harness.q_analysis import QOnDemos, summarize_by_outcome

    episode = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    q = np.array([1.0, 2.0, 4.0, 3.0, 1.0, 2.0, 0.0, 5.0])
    g = np.array([1.0, 3.0, 3.0, 1.0, 2.0, 3.0, 1.0, 4.0])
    result = QOnDemos(
        episode=episode,
        row=np.arange(8),
        step=np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        q=q,
        mc_return=g,
        terminal=np.array([0, 0, 1, 0, 0, 0, 0, 1], bool),
        tail_weight=np.zeros(8),
        gamma=0.9,
        horizon=1,
        obs_horizon=1,
        reduce="min",
    )
    by_outcome = summarize_by_outcome(result)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a @ b) / np.sqrt((a @ a) * (b @ b))

    reached = np.array([0, 1, 2, 6, 7])
    assert by_outcome["reach the goal"].rows == 5 and by_outcome["never reach it"].rows == 3
    assert by_outcome["reach the goal"].correlation == pytest.approx(pearson(q[reached], g[reached]))
    assert by_outcome["never reach it"].correlation == pytest.approx(pearson(q[3:6], g[3:6]))
    assert by_outcome["never reach it"].correlation == pytest.approx(-0.5)


def test_q_by_steps_to_terminal_bins_the_rows_before_a_goal_by_their_distance_to_it():
    """Episode 0: rows 0..5, the goal at row 3 (rows 0..3 are 3, 2, 1, 0 steps from it; rows 4, 5 have no
    goal after them in their episode, though episode 1 has one at row 8); episode 1: rows 6..9, its goal at
    row 8 (rows 6..8: 2, 1, 0 steps). Bins [0, 1), [1, 3), [3, ...): by hand below."""
    from offline_chunk.harness.q_analysis import QOnDemos, q_by_steps_to_terminal

    q = np.arange(10, dtype=float)
    result = QOnDemos(
        episode=np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1]),
        row=np.arange(10),
        step=np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3]),
        q=q,
        mc_return=-q,
        terminal=np.isin(np.arange(10), [3, 8]),
        tail_weight=np.zeros(10),
        gamma=0.9,
        horizon=1,
        obs_horizon=1,
        reduce="min",
    )
    table = q_by_steps_to_terminal(result, edges=(0, 1, 3))
    # d = 0: rows 3, 8; d in {1, 2}: rows 1, 2, 6, 7 (d = 2, 1, 2, 1); d >= 3: row 0
    assert [row["steps"] for row in table] == ["0-0", "1-2", "3+"]
    assert [row["rows"] for row in table] == [2, 4, 1]
    assert [row["mean_steps"] for row in table] == [0.0, 1.5, 3.0]
    assert [row["mean_q"] for row in table] == [5.5, 4.0, 0.0]
    assert [row["mean_return"] for row in table] == [-5.5, -4.0, 0.0]
    assert q_by_steps_to_terminal(result.rows_of(result.episode == 0), edges=(0, 10))[0]["rows"] == 4
