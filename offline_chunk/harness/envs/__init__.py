"""Simulator adapters: chunk execution (pure numpy) and OGBench environments (imported on use)."""

from offline_chunk.harness.envs.chunks import ChunkExecutor

__all__ = ["ChunkExecutor"]
