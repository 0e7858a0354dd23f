"""`make bench` (speed.py): configurations, the arithmetic of its figures, and the command end to end."""

import json

import pytest
import torch

from offline_chunk.agents import AGENTS
from offline_chunk.harness import speed
from offline_chunk.harness.cli import main

# The official networks (Diffusion-QL d871f5c, CPQL 34af027 with state 40, action 25): actor MLP 160,073
# parameters, two critic MLPs 297,474 together.
OFFICIAL_ACTOR, OFFICIAL_CRITIC = 160_073, 297_474


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_matched_networks_are_sized_like_the_official_ones(agent):
    setup = speed.bench_setup(agent, "matched", "cpu")
    actor = sum(p.numel() for p in setup.agent.actor.parameters())
    critic = sum(p.numel() for p in setup.agent.critic.parameters())
    assert abs(actor / OFFICIAL_ACTOR - 1) < 0.1 and abs(critic / OFFICIAL_CRITIC - 1) < 0.1
    assert setup.cfg.batch_size == 256 and setup.cfg.horizon == 5


class FakeClockSetup:
    """A setup whose update takes exactly 0.25 s of a fake clock; sync is counted."""

    def __init__(self, clock):
        self.clock, self.steps, self.syncs = clock, 0, 0

    def step(self):
        self.clock[0] += 0.25
        self.steps += 1

    def sync(self):
        self.syncs += 1


def test_throughput_is_updates_over_block_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
    setup = FakeClockSetup(clock)
    assert speed.throughput(setup, blocks=3, block_updates=8) == [4.0, 4.0, 4.0]
    assert setup.steps == 24 and setup.syncs == 6  # synchronised before and after each block


def test_bench_command_writes_table_and_json(tmp_path, capsys, monkeypatch):
    """The timed updates take known times: the clock reads real time plus an offset that each update of the
    3 timed blocks of 2 advances by 1e6, 2e6 and 4e5 s (blocks of 2e6, 4e6 and 8e5 s). Block rates by hand
    2 / 2e6 = 1e-6, 2 / 4e6 = 5e-7 and 2 / 8e5 = 2.5e-6 updates/s; their median 1e-6 (the mean would be
    1.33e-6, all updates over all the time 6 / 6.8e6 = 8.8e-7); 1e6 / 1e-6 s = 2.778e8 h to 1M updates. A
    block's real time (0.1 s, 10 s on a loaded machine) moves its rate by less than 0.1% below 800 s."""
    real_clock, offset, durations = speed.time.perf_counter, [0.0], iter([])
    real_step, real_throughput = speed.BenchSetup.step, speed.throughput

    def step(setup):
        metrics = real_step(setup)
        offset[0] += next(durations, 0.0)  # the timed blocks' updates only
        return metrics

    def timed_blocks(setup, blocks, block_updates):
        nonlocal durations
        durations = iter([1e6, 1e6, 2e6, 2e6, 4e5, 4e5])
        return real_throughput(setup, blocks, block_updates)

    monkeypatch.setattr(speed.time, "perf_counter", lambda: real_clock() + offset[0])
    monkeypatch.setattr(speed.BenchSetup, "step", step)
    monkeypatch.setattr(speed, "throughput", timed_blocks)
    out = tmp_path / "speed"
    args = ["bench", "--agent", "td3bc", "--config", "matched", "--device", "cpu", "--blocks", "3"]
    assert main([*args, "--block-updates", "2", "--out", str(out)]) == 0
    assert next(durations, None) is None  # all 6 timed updates were in the blocks
    result = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert result["agent"] == "td3bc" and result["config"] == "matched"
    assert result["blocks"] == pytest.approx([1e-6, 5e-7, 2.5e-6], rel=1e-3)
    assert result["updates_per_s"] == pytest.approx(1e-6, rel=1e-3)
    assert result["updates_per_s_min"] == pytest.approx(5e-7, rel=1e-3)
    assert result["updates_per_s_max"] == pytest.approx(2.5e-6, rel=1e-3)
    assert result["hours_to_1m_updates"] == pytest.approx(1e12 / 3600, rel=1e-3)
    # FLOP/s at the median rate: GFLOP per update · 1e9 · 1e-6 updates/s / 1e12
    assert result["achieved_tflops"] == pytest.approx(result["gflop_per_update"] * 1e-9, rel=1e-3)
    assert set(result["split_ms"]) == {"sample", "critic", "actor", "targets"}
    assert all(v > 0 for v in result["split_ms"].values())
    # The FLOPs of an update are at least those of the critics' forward pass on the batch: 2 FLOPs per
    # multiply-add of every critic weight, once per sample (convolutions apply theirs at several positions).
    assert result["gflop_per_update"] * 1e9 > 2 * result["critic_params"] * 256
    assert "| td3bc | matched |" in out.with_suffix(".md").read_text()
    assert "written:" in capsys.readouterr().out


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="config must be one of default, matched, gpu"):
        speed.bench_config("cpql", "tiny")


@pytest.mark.parametrize("override", ["horizon=1", "batch_size=64"])
def test_shape_overrides_are_refused_not_measured_at_the_default_shape(override):
    # The networks and synthetic data take H and the batch from the arguments: as an override, `horizon=1`
    # used to be timed at H = 5 and reported as such.
    with pytest.raises(ValueError, match="--scaling"):
        speed.bench_setup("qc", "qc_cpu", "cpu", overrides=[override])


def test_flop_count_of_a_matrix_product_and_its_backward_by_hand():
    a = torch.randn(64, 32)
    b = torch.randn(32, 16, requires_grad=True)
    with speed.FlopCount() as counter:
        (a @ b).sum().backward()
    # forward a @ b: 2·64·32·16; backward: only b needs a gradient, aᵀ @ grad: 2·32·64·16
    assert counter.total == 2 * 64 * 32 * 16 * 2


def test_bench_camera_rows_count_the_encoders_convolutions(tmp_path):
    """A row with one 16 px camera: the update's FLOPs include DrQ-v2's four convolutions on the batch's s
    and s' frames, by hand 7·7·32·27 + 5·5·32·288 + 3·3·32·288 + 1·1·32·288 multiply-adds per frame."""
    out = tmp_path / "speed"
    args = ["bench", "--agent", "td3bc", "--config", "matched", "--device", "cpu", "--blocks", "1"]
    assert main([*args, "--block-updates", "1", "--cameras", "16:1", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert result["cameras"] == "1 x 16x16"
    conv_macs = 7 * 7 * 32 * 27 + 5 * 5 * 32 * 288 + 3 * 3 * 32 * 288 + 1 * 1 * 32 * 288
    assert result["gflop_per_update"] * 1e9 > 2 * conv_macs * 2 * 256
    assert "| 1 x 16x16 |" in out.with_suffix(".md").read_text()
