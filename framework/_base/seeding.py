"""Separate random streams: teacher init, student init, data order, augmentation and probes each get a seed
derived from ``train.seed`` and the stream's name, so changing one stream never shifts another."""

from __future__ import annotations

import hashlib


def stream_seed(base: int, stream: str) -> int:
    """A 63-bit seed for a named random stream, stable across processes and platforms."""
    return int.from_bytes(hashlib.sha256(f"{base}:{stream}".encode()).digest()[:8], "little") >> 1
