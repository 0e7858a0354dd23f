"""Chunk policies: generators of (B, H, A) action chunks in normalized units (diffusion family, QC's
flow-matching MLP and ACT-style transformers), each with its typed configuration section."""

from torch import nn

from offline_chunk.policies.act import (
    DeterministicChunkPolicy,
    DeterministicTransformerConfig,
    GaussianTransformerConfig,
    TanhGaussianChunkPolicy,
)
from offline_chunk.policies.base import ChunkGenerator
from offline_chunk.policies.consistency import ConsistencyChunkPolicy, ConsistencyConfig
from offline_chunk.policies.ddpm import DDPMChunkPolicy, DDPMConfig
from offline_chunk.policies.flow import FlowChunkPolicy, FlowConfig
from offline_chunk.policies.mlp_gaussian import GaussianMLPConfig, TanhGaussianMLPPolicy

POLICIES = {
    "ddpm": DDPMChunkPolicy,
    "consistency": ConsistencyChunkPolicy,
    "flow": FlowChunkPolicy,
    "act_gaussian": TanhGaussianChunkPolicy,
    "mlp_gaussian": TanhGaussianMLPPolicy,
    "act_deterministic": DeterministicChunkPolicy,
}

PolicyConfig = (
    ConsistencyConfig
    | DDPMConfig
    | FlowConfig
    | GaussianTransformerConfig
    | GaussianMLPConfig
    | DeterministicTransformerConfig
)

# each policy kind's configuration section, by its `kind` (config.py: a layer that changes a policy's kind
# starts from that kind's defaults)
POLICY_CONFIGS = {config.model_fields["kind"].default: config for config in PolicyConfig.__args__}


def make_policy(cfg: PolicyConfig, **shape) -> nn.Module:
    """The policy `cfg.kind` sized by `cfg`, for observations and chunks of `shape` (obs_dim, obs_horizon,
    action_dim, horizon)."""
    return POLICIES[cfg.kind](**cfg.model_dump(exclude={"kind"}), **shape)


__all__ = [
    "ChunkGenerator",
    "ConsistencyChunkPolicy",
    "ConsistencyConfig",
    "DDPMChunkPolicy",
    "DDPMConfig",
    "DeterministicChunkPolicy",
    "DeterministicTransformerConfig",
    "FlowChunkPolicy",
    "FlowConfig",
    "GaussianMLPConfig",
    "GaussianTransformerConfig",
    "POLICIES",
    "POLICY_CONFIGS",
    "PolicyConfig",
    "TanhGaussianChunkPolicy",
    "TanhGaussianMLPPolicy",
    "make_policy",
]
