"""How big and how many: the full run and the quick one."""

from __future__ import annotations

from dataclasses import dataclass

from bench.data import GIB, KIB, MIB

SECTIONS = ("limits", "upload", "small", "download", "names", "memory")


@dataclass(frozen=True)
class Sizes:
    big: int  # the single-stream blob
    memory_small: int  # the smaller blob the memory section compares the big one with
    limit_bytes: int  # bytes hashed, written and sent per limit round
    small_size: int
    small_count: int
    small_concurrency: int
    resolves: int
    resolve_concurrency: int
    flips: int
    hot_flips: int
    flip_concurrency: int
    name_count: int
    rounds: int
    limit_rounds: int
    memory_rounds: int
    load_seconds: float  # deadline of one load run: it stops there even if not done

    @property
    def big_label(self) -> str:
        return f"{self.big // GIB} GiB" if self.big >= GIB else f"{self.big // MIB} MiB"


FULL = Sizes(
    big=GIB,
    memory_small=128 * MIB,
    limit_bytes=GIB,
    small_size=64 * KIB,
    small_count=5000,
    small_concurrency=32,
    resolves=20000,
    resolve_concurrency=64,
    flips=5000,
    hot_flips=3000,
    flip_concurrency=32,
    name_count=64,
    rounds=3,
    limit_rounds=5,
    memory_rounds=2,
    load_seconds=60,
)

QUICK = Sizes(
    big=256 * MIB,
    memory_small=32 * MIB,
    limit_bytes=256 * MIB,
    small_size=64 * KIB,
    small_count=1000,
    small_concurrency=32,
    resolves=5000,
    resolve_concurrency=64,
    flips=1000,
    hot_flips=1000,
    flip_concurrency=32,
    name_count=64,
    rounds=2,
    limit_rounds=3,
    memory_rounds=1,
    load_seconds=30,
)
