"""Simulator adapters: chunk execution (pure numpy) and OGBench environments (imported on use)."""

from offline_chunk.harness.envs.executor import ChunkExecutor

__all__ = ["ChunkExecutor"]
