"""Segment cache (content-addressed latents + conditions) and the LightningDataModule that reads it."""

from housevox.data.cache import CACHE_FORMAT_VERSION, CacheBuildReport, build_cache, entry_key, load_entry, read_index
from housevox.data.datamodule import SeededBatchSampler, SegmentCacheDataModule, SegmentCacheDataset

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheBuildReport",
    "SeededBatchSampler",
    "SegmentCacheDataModule",
    "SegmentCacheDataset",
    "build_cache",
    "entry_key",
    "load_entry",
    "read_index",
]
