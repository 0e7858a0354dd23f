"""Agents: one file per agent; shared critic and target machinery in base.py and targets.py."""

from offline_chunk.agents.base import ChunkAgent, Dims
from offline_chunk.agents.cpql import CPQLAgent
from offline_chunk.agents.dql import DiffusionDoubleQAgent

AGENTS = {"dql": DiffusionDoubleQAgent, "cpql": CPQLAgent}


def make_agent(name: str, dims: Dims, cfg: dict, normalizer, total_steps: int) -> ChunkAgent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; available: {sorted(AGENTS)}")
    return AGENTS[name](dims, cfg, normalizer, total_steps)


__all__ = ["AGENTS", "CPQLAgent", "ChunkAgent", "DiffusionDoubleQAgent", "Dims", "make_agent"]
