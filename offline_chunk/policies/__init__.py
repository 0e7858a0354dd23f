"""Chunk policies: diffusion-family generators of (B, H, A) action chunks in normalized units."""

from offline_chunk.policies.base import ChunkGenerator
from offline_chunk.policies.consistency import ConsistencyChunkPolicy
from offline_chunk.policies.ddpm import DDPMChunkPolicy

POLICIES = {"ddpm": DDPMChunkPolicy, "consistency": ConsistencyChunkPolicy}


def make_policy(kind: str, **kwargs) -> ChunkGenerator:
    """The policy of `kind` ('ddpm' or 'consistency') built from the constructor's keyword arguments."""
    if kind not in POLICIES:
        raise ValueError(f"policy kind must be one of {sorted(POLICIES)}, got {kind!r}")
    return POLICIES[kind](**kwargs)


__all__ = ["ChunkGenerator", "ConsistencyChunkPolicy", "DDPMChunkPolicy", "POLICIES", "make_policy"]
