"""How an update runs (compute.py): no host reads inside it, bf16 autocast and torch.compile against the
plain fp32 eager path over a few hundred updates, and the eager fallback when compiling fails."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import chain_store, tiny_config
from torch import nn
from torch.overrides import TorchFunctionMode
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


def train_and_probe(tmp_path, compile_choice, precision, *overrides):
    """A tiny CPQL agent after UPDATES updates, a fixed probe batch, its online critics' Q (K, 512) there, and
    the next training batch. Rewards are scaled so that Q reaches ~50, where bf16 rounding would show."""
    store = tmp_path / "chain.zarr"
    if not store.exists():
        chain_store(store, reward_scale=30.0)
    run = build_run(tiny_config("cpql", store, tmp_path / "run", *overrides))
    run.agent.configure_compute(compile_choice, precision)
    for _ in range(UPDATES):
        run.agent.update(run.sampler.sample())
    probe = run.dataset.sampler(512, seed=99).sample()
    q = run.agent.q_value(probe["observations"], probe["actions"], reduce="none")
    return run.agent, probe, q, run.sampler.sample()


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    return train_and_probe(tmp_path_factory.mktemp("fp32"), False, "fp32")


# The qc recipe's critics: QC's MLP (Dense -> GELU -> LayerNorm), here 3 x 32
QC_MLP_CRITIC = (
    "agent.critic.kind=mlp",
    "agent.critic.hidden_dims=[32,32,32]",
    "agent.critic.layer_norm=true",
)


@pytest.fixture(scope="module")
def fp32_mlp_run(tmp_path_factory):
    return train_and_probe(tmp_path_factory.mktemp("fp32_mlp"), False, "fp32", *QC_MLP_CRITIC)


# bf16 keeps 8 significant bits (7 stored, 1 implicit): rounding to nearest is within 2^-8 relative.
U_BF16 = 2.0**-8
U_FP32 = 2.0**-24
LINEAR_OPS = (F.linear, F.conv1d)
UNHANDLED_PRODUCTS = {torch.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm, torch.addmm, F.conv2d}
EXACT_OPS = {  # moves, copies and selections: no new values, nothing rounded
    torch.Tensor.reshape,
    torch.Tensor.unflatten,
    torch.Tensor.repeat,
    torch.index_select,
    torch.where,  # ChunkConv1d's matrix: kernel taps or 0
    torch.Tensor.view,
    torch.Tensor.permute,
    torch.Tensor.transpose,
    torch.Tensor.contiguous,
    torch.Tensor.__getitem__,
    torch.Tensor.squeeze,
    torch.Tensor.unsqueeze,
    torch.Tensor.expand,
    torch.Tensor.flatten,
    torch.Tensor.chunk,
    torch.Tensor.split,
    torch.Tensor.unbind,
    torch.Tensor.to,
    torch.Tensor.float,
    torch.cat,
}


def gamma(n: int) -> float:
    """γ_n = n u / (1 − n u), u = 2^-24: a float32 sum of n + 1 terms (or dot product of length n), in any
    order and any blocking (any kernel, any thread count), is within γ_n Σ|terms| of the exact one (Higham,
    Accuracy and Stability of Numerical Algorithms, 2002, §3.1 eq. 3.5 and §4.2)."""
    return n * U_FP32 / (1 - n * U_FP32)


class LocalRoundingErrors(TorchFunctionMode):
    """Runs a critic member in float32 and records, for every op whose output autocast can change, the
    output y and a bound e (same shape) on |y_bf16 − y| + |y_fp32 − y| committed by that op alone, from
    exact inputs: the local rounding errors of the two passes compared. With u = 2^-8, a = |W| |x|, c = |b|:

    - matrix products (linear, conv1d) under autocast: x, W and b rounded to bf16 (u each); the product of
      two bf16 numbers is exact in float32 (8 + 8 significant bits <= 24); the sum of the n − 1 products
      and the bias in float32 in any order (γ_n, both passes); subnormal products flushed to 0 (2^-126
      each); the result rounded to bf16 (u |y|, and u (a + c) more where a kernel rounds the product
      before it adds the bias):
          e = (2u + u²)(1 + u) a + u (1 + u) c + u (a + c) + u |y| + γ_n ((1 + u)³ + 1)(a + c) + n 2^-126
    - the value layer, float32 under autocast too: e = 2 γ_n (a + c).
    - every other op (GroupNorm, Mish, the mean over time, FiLM's multiply and add) reads bf16 values,
      computes in float32 and rounds its output to bf16: u |y|; plus u (|γ x̂| + |β|) where a kernel rounds
      a norm's affine parameters to bf16, 2 γ_m mean |x| for a mean over m values, and 2^-16 |y| for the
      few float32 roundings (2^-24 each) of both passes' elementwise arithmetic.
    """

    def __init__(self, value_weight: torch.Tensor):
        super().__init__()
        self.value_weight = value_weight
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        assert func not in UNHANDLED_PRODUCTS, f"{func}: add its error terms to LocalRoundingErrors"
        floating = isinstance(out, torch.Tensor) and out.is_floating_point() and out.requires_grad
        if not floating or func in EXACT_OPS:
            return out
        with torch.no_grad():
            y, u = out.detach().abs(), U_BF16
            if func in LINEAR_OPS:
                x, w, b = args[0], args[1], args[2]
                a = func(x.abs(), w.abs(), None, *args[3:], **kwargs)
                if b is None:  # the split first layer's parts but the first (nets/mlp.py) have no bias
                    c = torch.zeros(())
                else:
                    c = b.abs() if func is F.linear else b.abs()[:, None]
                n = w[0].numel() + (b is not None)  # fan-in and bias
                if w is self.value_weight:
                    e = 2 * gamma(n) * (a + c)
                else:
                    e = (2 * u + u * u) * (1 + u) * a + u * (1 + u) * c + u * (a + c) + u * y
                    e = e + gamma(n) * ((1 + u) ** 3 + 1) * (a + c) + n * 2.0**-126
            else:
                e = (u + 2.0**-16) * y
                shift = kwargs.get("bias", args[3] if len(args) > 3 else None)
                if func in (F.group_norm, F.layer_norm) and shift is not None:  # y = γ x̂ + β
                    beta = shift if func is F.layer_norm else shift.view(-1, *[1] * (y.dim() - 2))
                    e = e + u * ((out.detach() - beta).abs() + beta.abs())
                if func in (torch.Tensor.mean, torch.mean):
                    m = args[0].numel() // out.numel()
                    e = e + 2 * gamma(m) * func(args[0].abs(), *args[1:], **kwargs)
        out.retain_grad()
        self.records.append((out, e))
        return out


def critic_inputs(agent, probe: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe pairs as the critics read them (normalized, float32 in both passes)."""
    obs = agent.network_obs(agent._as_tensor(probe["observations"]))
    return obs, agent.critic_view(agent.normalizer.action(agent._as_tensor(probe["actions"])))


def critic_member(agent, k: int) -> tuple[nn.Module, nn.Linear]:
    """Critic k of the ensemble as a plain float32 module, and its value layer (its last Linear)."""
    member = copy.deepcopy(agent.critic._base).to_empty(device="cpu")
    member.load_state_dict({name: p[k].detach() for name, p in agent.critic.stacked.named_parameters()})
    return member, [m for m in member.modules() if isinstance(m, nn.Linear)][-1]


def first_order_error_bound(agent, probe: dict) -> torch.Tensor:
    """(K, B) bound on |Q_bf16 − Q_fp32| at the probe pairs: Σ over the recorded ops and their outputs y_i of
    |∂Q/∂y_i| · e_i (the local bounds above), the adjoints from a float32 backward pass of each member."""
    obs, chunks = critic_inputs(agent, probe)
    bounds = []
    for k in range(agent.critic.size):
        member, value_layer = critic_member(agent, k)
        with LocalRoundingErrors(value_layer.weight) as errors:
            q = member(obs, chunks)
        q.sum().backward()  # samples are independent: the gradient of the sum is each sample's own
        assert all(y.shape[0] == len(q) for y, _ in errors.records)
        terms = [(y.grad.abs() * e).flatten(1).sum(1) for y, e in errors.records if y.grad is not None]
        bounds.append(torch.stack(terms).sum(0))
    return torch.stack(bounds)


# the U-Net critic, and the qc recipe's MLP (its Q reaches ~14 in as many updates: bf16's spacing there, 2^-4,
# is still 10^5 times the value layer's float32 bound below)
@pytest.mark.parametrize("critic, q_reached", [("fp32_run", 30), ("fp32_mlp_run", 10)])
def test_bf16_critic_pass_stays_within_its_rounding_error_bound(critic, q_reached, request):
    """One pass of the trained critics under bf16 autocast: each |Q_bf16 − Q_fp32| (K critics x 512 probe
    pairs) is within a bound derived from bf16's unit roundoff and the pass's own values, and the value layer
    computes Q in float32 from its bf16 input.

    The bound is the first-order (linearised) rounding error analysis of the whole pass (Linnainmaa,
    "Taylor expansion of the accumulated rounding error", BIT 16, 1976; Higham 2002, §3.1): each op commits
    a local error δ_i at its output y_i, bounded componentwise, |δ_i| <= e_i, from the magnitudes of its
    operands (LocalRoundingErrors), and Q moves by Σ_i (∂Q/∂y_i) δ_i + O(u²), so |ΔQ| <= Σ_i |∂Q/∂y_i| e_i
    up to terms of second order in u. It takes the worst case over every rounding's sign and every
    summation order, so it holds whatever the kernels (default, AVX2, AVX512-BF16 or AMX: their bf16 dot
    products round and accumulate differently, but all from round-to-nearest bf16 operands into float32)
    and the thread count. It is a guarantee, not an estimate: the errors of ~10^4 roundings per Q cancel in
    practice, and the actual error is 2.2% of the bound (default, AVX2 and AVX512 kernels, 1 and 2 threads;
    0.2% of max |Q|), far from the second-order terms' reach. So it catches gross losses only (errors tens
    of times those of bf16 operands; features rounded to fp8 reached 18% of it, the two critics' outputs
    swapped 49%), not a bf16 value layer: that one is checked locally, against its own float32 bound."""
    agent, probe, q, _ = request.getfixturevalue(critic)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_q = agent.q_value(probe["observations"], probe["actions"], reduce="none")
    assert bf16_q.dtype == torch.float32 and q.abs().max() > q_reached
    assert not torch.equal(bf16_q, q)  # autocast did act
    bound = first_order_error_bound(agent, probe)
    error = (bf16_q - q).abs()
    assert (error <= bound).all(), f"max |ΔQ| / bound = {(error / bound).max():.3f}"

    # The value layer under autocast: Q = w·h + b from its (bf16) input h, a float32 sum of n terms within
    # γ_n (|w||h| + |b|) of the exact one; a bf16 layer rounds Q to 8 bits (multiples of 2^-2 in [32, 64)).
    member, value_layer = critic_member(agent, 0)
    seen = {}
    value_layer.register_forward_hook(lambda module, inputs, output: seen.update(h=inputs[0], q=output))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        member(*critic_inputs(agent, probe))
    h, w, b = seen["h"].double(), value_layer.weight.double(), value_layer.bias.double()
    assert seen["q"].dtype == torch.float32
    local_bound = gamma(w.shape[1] + 1) * F.linear(h.abs(), w.abs(), b.abs())
    assert ((seen["q"].double() - F.linear(h, w, b)).abs() <= local_bound).all()


def critic_gradient(agent, batch: dict, precision: str) -> torch.Tensor:
    """The critics' gradient (flattened) of the agent's critic loss on `batch` under `precision`, the next
    chunks sampled with the same noise in both precisions; the weights are left as they were."""
    agent.configure_compute(False, precision)
    agent.critic.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss, _ = agent.critic_objective(*agent.normalized(batch), batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in agent.critic.parameters()])
    agent.critic.zero_grad(set_to_none=True)
    agent.configure_compute(False, "fp32")
    return grads


def test_bf16_critic_gradient_follows_the_fp32_one(tmp_path):
    """The critic loss's gradient under bf16 autocast against fp32, from the same weights and batch:
    ||g_bf16 − g_fp32|| <= 10% of ||g_fp32||; a gradient lost or pointing elsewhere is at 100% or more.

    Why the bound holds on any CPU: g = Σ_b δ_b ∂Q_b/∂θ. Taken at the initial weights (Q near 0, targets y up
    to 30 from the scaled rewards), the TD error δ = Q − y is not a small difference of large values, so
    bf16's rounding of Q and y (2^-8 relative each) moves δ by about 2^-8 relative; backpropagation through
    the critic's ~15 autocast ops rounds each local derivative by at most 2^-8 relative too, about 6% in all
    to first order, whatever the kernel rounds or sums in which order. Measured 0.25% under the default,
    AVX2 and AVX512-BF16 kernels with 1 and 2 threads (a 2-core Xeon). (After training, δ is a difference of
    two values near 50 and bf16's rounding of them is of δ's own size: a bound there is a bound on one
    machine's rounding; the update test this replaces failed under AVX2 with 2 threads at 91% for that
    reason, and an Adam step, which divides each gradient component by its own size, amplifies the
    components that rounding dominates.)"""
    store = chain_store(tmp_path / "chain.zarr", reward_scale=30.0)
    run = build_run(tiny_config("cpql", store, tmp_path / "run"))
    batch = run.sampler.sample()
    fp32 = critic_gradient(run.agent, batch, "fp32")
    bf16 = critic_gradient(run.agent, batch, "bf16")
    assert fp32.norm() > 1e-3  # the loss has a gradient
    assert (bf16 - fp32).norm() <= 0.1 * fp32.norm(), f"{((bf16 - fp32).norm() / fp32.norm()):.3f}"
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
