"""Agents: one file per agent with its typed `Config` and its update (critic loss and target, actor loss,
target updates); the machinery they share in base.py, the pieces of the candidate-sampling agents (dql,
cpql, qc) in candidates.py, pure target and loss functions in targets.py and losses.py. AGENTS is the one
registry (the command line, the presets and the benchmark read it)."""

from offline_chunk.agents.base import AgentConfig, ChunkAgent, Dims
from offline_chunk.agents.candidates import CandidateChunkAgent
from offline_chunk.agents.chunk_sac import ChunkSACAgent
from offline_chunk.agents.cpql import CPQLAgent
from offline_chunk.agents.dql import DiffusionDoubleQAgent
from offline_chunk.agents.qc import QCAgent
from offline_chunk.agents.td3bc import TD3BCAgent

AGENTS = {
    agent.name: agent for agent in (CPQLAgent, DiffusionDoubleQAgent, QCAgent, ChunkSACAgent, TD3BCAgent)
}


def make_agent(cfg: AgentConfig, dims: Dims, normalizer, total_steps: int) -> ChunkAgent:
    """The agent `cfg.name` configured by `cfg`, for networks of `dims`."""
    return AGENTS[cfg.name](dims, cfg, normalizer, total_steps)


__all__ = [
    "AGENTS",
    "AgentConfig",
    "CPQLAgent",
    "CandidateChunkAgent",
    "ChunkAgent",
    "ChunkSACAgent",
    "DiffusionDoubleQAgent",
    "Dims",
    "QCAgent",
    "TD3BCAgent",
    "make_agent",
]
