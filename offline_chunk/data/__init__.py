"""Data layer: step-level store, chunk index, datasets and samplers, source converters."""

from offline_chunk.data.chunks import ChunkIndex, build_chunk_index
from offline_chunk.data.dataset import ChunkSampler, OfflineRLDataset
from offline_chunk.data.store import StepData, open_store, write_store

__all__ = [
    "ChunkIndex",
    "ChunkSampler",
    "OfflineRLDataset",
    "StepData",
    "build_chunk_index",
    "open_store",
    "write_store",
]
