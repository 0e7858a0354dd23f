"""Data layer: step-level store, chunk index, batches and samplers, dataset, source converters."""

from offline_chunk.data.batches import ChunkSampler
from offline_chunk.data.chunks import ChunkIndex, build_chunk_index
from offline_chunk.data.dataset import OfflineRLDataset
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
