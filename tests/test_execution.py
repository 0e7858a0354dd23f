"""How an update runs (execution.py): no host reads inside it, bf16 autocast and torch.compile against the
plain fp32 eager path over a few hundred updates, and the eager fallback when compiling fails."""

import copy
import warnings

import pytest
import torch
from helpers import chain_store, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

import offline_chunk.agents.base as agent_base
from offline_chunk.agents import AGENTS
from offline_chunk.compute import CompiledWithFallback, autocast_context, compile_enabled
from offline_chunk.train import build_run

UPDATES = 300


class HostReads(TorchDispatchMode):
    """Records the ATen ops that copy a device value to the host (`.item()`, `bool(tensor)`, `.tolist()`)
    or whose output shape depends on values (`nonzero`, boolean-mask indexing): each is a CUDA sync."""

    OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.OPS:
            self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def test_host_read_detector_sees_item_and_masks():
    with HostReads() as reads:
        x = torch.arange(4.0)
        x.sum().item()
        x.nonzero()
    assert "aten::_local_scalar_dense" in reads.ops and "aten::nonzero" in reads.ops


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_sampling_and_update_read_nothing_on_the_host(tmp_path, agent):
    run = build_run(tiny_config(agent, chain_store(tmp_path / "chain.zarr"), tmp_path / "run"))
    for _ in range(2):  # optimizer state exists, targets have moved
        run.agent.update(run.sampler.sample())
    with HostReads() as reads:
        for _ in range(2):  # td3bc: a delayed actor update and one without
            run.agent.update(run.sampler.sample())
    assert reads.ops == []


# --------------------------------------------------------------------------- against plain fp32


def train_and_probe(tmp_path, compile_choice, precision):
    """A tiny CPQL agent after UPDATES updates, a fixed probe batch, its online critics' Q (K, 512) there, and
    the next training batch. Rewards are scaled so that Q reaches ~50, where bf16 rounding would show."""
    store = tmp_path / "chain.zarr"
    if not store.exists():
        chain_store(store, reward_scale=30.0)
    run = build_run(tiny_config("cpql", store, tmp_path / "run"))
    run.agent.configure_compute(compile_choice, precision)
    for _ in range(UPDATES):
        run.agent.update(run.sampler.sample())
    probe = run.dataset.sampler(512, seed=99).sample()
    q = run.agent.q_value(probe["observations"], probe["actions"], reduce="none")
    return run.agent, probe, q, run.sampler.sample()


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return train_and_probe(tmp_path_factory.mktemp("fp32"), False, "fp32")


def test_bf16_critic_pass_keeps_q_within_half_a_percent(fp32_run):
    """One pass of the trained critics under bf16 autocast: max |ΔQ| <= 0.5% of max |Q|, and Q comes out in
    float32 (the value layer is not autocast).

    Why the bound holds on any CPU: the error is that of rounding each matrix product's operands to bf16's
    8-bit significand (unit roundoff 2^-9 = 0.2%), which IEEE round-to-nearest makes the same on every CPU;
    products accumulate in float32, whose reordering across kernels and threads moves Q by ~1e-6 relative.
    Measured 0.26% (AVX2 and the default kernels), so the bound leaves a 2x margin."""
    agent, probe, q, _ = fp32_run
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_q = agent.q_value(probe["observations"], probe["actions"], reduce="none")
    assert bf16_q.dtype == torch.float32 and q.abs().max() > 30
    assert (bf16_q - q).abs().max() <= 5e-3 * q.abs().max()


def one_update_moves_q(agent, state: dict, batch: dict, probe: dict, precision: str) -> torch.Tensor:
    """ΔQ (K, 512) at the probe pairs made by one update of the agent from `state` (weights, Adam state)."""
    agent.load_state_dict(state["weights"])
    agent.load_training_state(copy.deepcopy(state["training"]))
    agent.configure_compute(False, precision)
    before = agent.q_value(probe["observations"], probe["actions"], reduce="none")
    torch.manual_seed(0)  # the same noise draws for the actor's samples in both precisions
    agent.update(batch)
    return agent.q_value(probe["observations"], probe["actions"], reduce="none") - before


def test_bf16_update_moves_q_as_fp32_does(fp32_run):
    """From the same trained weights and Adam state, one update on one batch under bf16 autocast changes the
    critics' Q along the fp32 update: ||ΔQ_bf16 − ΔQ_fp32|| <= 50% of ||ΔQ_fp32||. A bf16 update that lost its
    gradient or followed another direction is at 100% or more.

    One update, because two trainings apart by rounding drift apart chaotically: after 300 updates the fp32
    runs under the AVX2 and the default kernels already differed by 2x in their next ΔQ, so a bound on the
    end of two long runs is a bound on one machine's rounding. Over one update the gradient is the TD error
    δ = Q − y times ∂Q/∂θ, and after 300 updates δ is a small difference of two values near 50, each of
    which bf16 rounds by up to 2^-9 relative per product (the critic-pass test above): the relative error of
    δ, hence of the step, is that rounding times |Q| / |δ|, and how many roundings a kernel makes differs by
    CPU. Measured 3.1% (default kernels), 4.1% (AVX2) and 21% (AVX512-BF16, whose native bf16 dot products
    round differently), correlation 0.9997, 0.9998 and 0.988; the bound leaves 2.4x over the worst kernel
    seen and stays below the 100% of a broken update."""
    agent, probe, _, batch = fp32_run
    state = {"weights": copy.deepcopy(agent.state_dict()), "training": copy.deepcopy(agent.training_state())}
    fp32 = one_update_moves_q(agent, state, batch, probe, "fp32")
    bf16 = one_update_moves_q(agent, state, batch, probe, "bf16")
    agent.load_state_dict(state["weights"])
    agent.load_training_state(state["training"])
    agent.configure_compute(False, "fp32")
    assert fp32.abs().mean() > 1e-3  # the update did move Q
    assert (bf16 - fp32).norm() <= 0.5 * fp32.norm()
    assert not torch.equal(bf16, fp32)  # autocast did act


def test_compiled_update_matches_eager(tmp_path, fp32_run, monkeypatch):
    """torch.compile (aot_eager backend: Dynamo capture and AOTAutograd, no code generation, so it runs in
    seconds) gives the eager result after 300 updates within 1e-5."""
    compiled = []

    def aot_eager(fn):
        compiled.append(fn.__name__)
        return CompiledWithFallback(fn, backend="aot_eager")

    monkeypatch.setattr(agent_base, "CompiledWithFallback", aot_eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would make this test vacuous
        compiled_q = train_and_probe(tmp_path, True, "fp32")[2]
    assert sorted(compiled) == ["actor_objective", "critic_objective"]
    torch.testing.assert_close(compiled_q, fp32_run[2], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_inductor_update_on_cpu_matches_eager(tmp_path, fp32_run):
    """The inductor backend (C++ code generation; minutes to compile on 2 cores): within 1e-3 of max |Q|."""
    q = fp32_run[2]
    compiled_q = train_and_probe(tmp_path, True, "fp32")[2]
    assert (compiled_q - q).abs().max() <= 1e-3 * q.abs().max()


# --------------------------------------------------------------------------- switches


def test_compile_failure_warns_and_runs_eagerly():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    def double(x):
        return 2 * x

    fn = CompiledWithFallback(double, backend=broken_backend)
    with pytest.warns(UserWarning, match="torch.compile failed for double; running eagerly"):
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
    assert fn.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))


def test_auto_compiles_on_cuda_only_and_bad_choices_are_refused():
    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))
    with pytest.raises(ValueError, match="compile must be one of"):
        compile_enabled("yes", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        autocast_context(torch.device("cpu"), "fp16")
    with autocast_context(torch.device("cpu"), "bf16")():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
