"""Agents: one file per agent; shared critic and target machinery in base.py and targets.py."""

from offline_chunk.agents.base import ChunkAgent, DiffusionChunkAgent, Dims
from offline_chunk.agents.chunk_sac import ChunkSACAgent
from offline_chunk.agents.cpql import CPQLAgent
from offline_chunk.agents.dql import DiffusionDoubleQAgent
from offline_chunk.agents.td3bc import TD3BCAgent

AGENTS = {
    "dql": DiffusionDoubleQAgent,
    "cpql": CPQLAgent,
    "chunk_sac": ChunkSACAgent,
    "td3bc": TD3BCAgent,
}


def make_agent(name: str, dims: Dims, cfg: dict, normalizer, total_steps: int) -> ChunkAgent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; available: {sorted(AGENTS)}")
    return AGENTS[name](dims, cfg, normalizer, total_steps)


__all__ = [
    "AGENTS",
    "CPQLAgent",
    "ChunkAgent",
    "ChunkSACAgent",
    "DiffusionChunkAgent",
    "DiffusionDoubleQAgent",
    "Dims",
    "TD3BCAgent",
    "make_agent",
]
