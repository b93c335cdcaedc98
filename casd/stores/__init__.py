"""Blob stores: the contract (:mod:`casd.stores.base`) and its backends (``file``, ``s3``)."""

from casd.stores.base import (
    BlobReader,
    BlobStore,
    Capabilities,
    Published,
    Segment,
    StagedBlob,
    UnfinishedPublication,
    is_segment_name,
    segment_name,
)

__all__ = [
    "BlobReader",
    "BlobStore",
    "Capabilities",
    "Published",
    "Segment",
    "StagedBlob",
    "UnfinishedPublication",
    "is_segment_name",
    "segment_name",
]
