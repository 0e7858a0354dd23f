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


def test_bench_command_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "speed"
    args = ["bench", "--agent", "td3bc", "--config", "matched", "--device", "cpu", "--blocks", "2"]
    assert main([*args, "--block-updates", "2", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())["results"][0]
    assert result["agent"] == "td3bc" and result["config"] == "matched" and len(result["blocks"]) == 2
    assert min(result["blocks"]) <= result["updates_per_s"] <= max(result["blocks"])
    assert set(result["split_ms"]) == {"sample", "critic", "actor", "targets"}
    assert all(v > 0 for v in result["split_ms"].values())
    # The FLOPs of an update are at least those of the critics' forward pass on the batch: 2 FLOPs per
    # multiply-add of every critic weight, once per sample (convolutions apply theirs at several positions).
    assert result["gflop_per_update"] * 1e9 > 2 * result["critic_params"] * 256
    assert result["hours_to_1m_updates"] == pytest.approx(1e6 / result["updates_per_s"] / 3600)
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
