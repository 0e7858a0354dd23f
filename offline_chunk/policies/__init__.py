"""Chunk policies: generators of (B, H, A) action chunks in normalized units (diffusion family and
ACT-style transformers)."""

from torch import nn

from offline_chunk.policies.act import DeterministicChunkPolicy, TanhGaussianChunkPolicy
from offline_chunk.policies.base import ChunkGenerator
from offline_chunk.policies.consistency import ConsistencyChunkPolicy
from offline_chunk.policies.ddpm import DDPMChunkPolicy

POLICIES = {
    "ddpm": DDPMChunkPolicy,
    "consistency": ConsistencyChunkPolicy,
    "act_gaussian": TanhGaussianChunkPolicy,
    "act_deterministic": DeterministicChunkPolicy,
}


def make_policy(kind: str, **kwargs) -> nn.Module:
    """The policy of `kind` (a key of POLICIES) built from the constructor's keyword arguments."""
    if kind not in POLICIES:
        raise ValueError(f"policy kind must be one of {sorted(POLICIES)}, got {kind!r}")
    return POLICIES[kind](**kwargs)


__all__ = [
    "ChunkGenerator",
    "ConsistencyChunkPolicy",
    "DDPMChunkPolicy",
    "DeterministicChunkPolicy",
    "POLICIES",
    "TanhGaussianChunkPolicy",
    "make_policy",
]
