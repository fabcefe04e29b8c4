"""Examples and their token layout."""

from sklens.data.example import Example
from sklens.data.format import Batch, Encoded, collate, encode, iter_batches

__all__ = ["Batch", "Encoded", "Example", "collate", "encode", "iter_batches"]
