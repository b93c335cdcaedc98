"""The sections of a run. Each round runs every target once, one after the other (in an order
that rotates from round to round), so that a ratio compares figures taken side by side."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from bench import limits as machine
from bench import names
from bench.config import Sizes
from bench.data import GIB, MIB, BigFile, SmallSet, make_big_file, restamp, small_set
from bench.httpload import LoadResult, run_load
from bench.procs import CpuMeter, descendants
from bench.results import Results
from bench.targets import Casd, Registry, Target
from bench.wrk import wrk_get

T = TypeVar("T")
MB = 1e6


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


@dataclass
class Run:
    sizes: Sizes
    results: Results
    workdir: Path
    casds: list[Casd]
    peers: list[Target]
    profile_dir: Path | None = None
    log: Any = print
    stored_big: dict[str, BigFile] = field(default_factory=dict)
    stored_small: dict[str, SmallSet] = field(default_factory=dict)
    has_uploads: bool = False
    has_names: bool = False

    @property
    def targets(self) -> list[Target]:
        return [*self.casds, *self.peers]

    def in_turn(self, round_index: int, targets: list[Any] | None = None) -> list[Any]:
        """The targets, rotated by the round so that none always goes first."""
        chosen = list(self.targets if targets is None else targets)
        shift = round_index % len(chosen) if chosen else 0
        return chosen[shift:] + chosen[:shift]

    def big_file(self, name: str = "big.bin", size: int | None = None) -> Path:
        path = self.workdir / name
        if not path.exists():
            make_big_file(path, size or self.sizes.big)
        return path

    def cpu_meter(self, target: Target) -> Any:
        """For casd: a function giving the CPU seconds (event loops, all casd, PostgreSQL)
        spent since this call; None for peers."""
        if not isinstance(target, Casd) or target.service is None:
            return None
        server = CpuMeter(target.service.tree())
        postgres = CpuMeter(self.postgres_pids())

        def spent() -> tuple[float, float, float]:
            loop, total = server.spent()
            return loop, total, postgres.spent()[1]

        return spent

    def postgres_pids(self) -> list[int]:
        try:
            postmaster = int((self.workdir / "pg/postgres/postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *descendants(postmaster)]

    @contextlib.contextmanager
    def profiled(self, target: Target, label: str) -> Iterator[None]:
        if isinstance(target, Casd):
            with target.profiling(self.profile_dir, label):
                yield
        else:
            yield


def transfer(run: Run, target: Target, kind: str, action: Any, blob: BigFile) -> float:
    """Run one big transfer; for casd, also record the server's CPU per GiB (less noisy than
    speed on a shared machine: the event loop's share bounds what one stream can reach)."""
    settle()
    meter = run.cpu_meter(target)
    with run.profiled(target, kind.replace(".", "-")):
        seconds: float = action(blob)
    if meter is not None:
        loop, total, _ = meter()
        gib = blob.size / GIB
        label = f"{kind.split('.')[1]} {run.sizes.big_label} [{target.name}]"
        run.results.add(
            f"{kind}_cpu.loop.{target.name}", f"{label} event-loop CPU", "s/GiB", loop / gib
        )
        run.results.add(
            f"{kind}_cpu.all.{target.name}", f"{label} all casd CPU", "s/GiB", total / gib
        )
    return seconds


def record_cpu(
    run: Run, key: str, label: str, spent: tuple[float, float, float], count: int
) -> None:
    """casd's CPU per request (event loop, all its threads) and PostgreSQL's."""
    loop, total, database = (1000 * value / count for value in spent)
    run.results.add(f"{key}.cpu_loop", f"{label} event-loop CPU", "ms/req", loop)
    run.results.add(f"{key}.cpu_all", f"{label} all casd CPU", "ms/req", total)
    run.results.add(f"{key}.cpu_pg", f"{label} PostgreSQL CPU", "ms/req", database)


def settle() -> None:
    """Write back dirty pages left by the previous transfer (nginx does not fsync), so that
    the next one does not pay for them."""
    os.sync()


# --- limits -----------------------------------------------------------------------------------


def section_limits(run: Run) -> None:
    sizes, results = run.sizes, run.results
    buffer = machine.pattern(min(256 * MIB, sizes.limit_bytes))
    total = sizes.limit_bytes
    label = f"{total // MIB} MiB"
    for _ in range(sizes.limit_rounds):
        results.add(
            "limits.blake3",
            "BLAKE3 hash, 1 thread, 1 MiB updates",
            "MB/s",
            machine.blake3_rate(buffer, total) / MB,
        )
        settle()
        results.add(
            "limits.disk",
            f"disk write {label} + fsync",
            "MB/s",
            machine.disk_rate(buffer, total, run.workdir) / MB,
        )
        results.add(
            "limits.tcp", f"loopback TCP {label}", "MB/s", machine.tcp_rate(buffer, total) / MB
        )
    for _ in range(sizes.rounds):
        settle()
        rate = machine.durable_publish_rate(
            run.workdir, sizes.small_count, sizes.small_size, sizes.small_concurrency
        )
        results.add(
            "limits.durable",
            f"durable {sizes.small_size // 1024} KiB files, {sizes.small_concurrency} threads",
            "files/s",
            rate,
        )
    results.derive(
        "limits.min",
        "min(limits), round by round",
        "MB/s",
        ["limits.blake3", "limits.disk", "limits.tcp"],
        min,
    )


# --- single-stream upload ---------------------------------------------------------------------


def section_upload(run: Run) -> None:
    sizes, results = run.sizes, run.results
    path = run.big_file()
    for round_index in range(sizes.rounds):
        big = restamp(path)
        for target in run.in_turn(round_index):
            seconds = transfer(run, target, "upload.put", target.put_big, big)
            results.add(
                f"upload.put.{target.name}",
                f"PUT {sizes.big_label}, one stream [{target.name}]",
                "MB/s",
                big.size / seconds / MB,
            )
            keep_big(run, target, big)
        if run.has_uploads:
            resumable_round(run, path, round_index)
    upload_ratios(run)


def keep_big(run: Run, target: Target, big: BigFile) -> None:
    """Keep the latest big blob of each target (the download section reads it), free the rest."""
    previous = run.stored_big.get(target.name)
    if previous is not None:
        target.discard_big(previous)
    run.stored_big[target.name] = big


def resumable_round(run: Run, path: Path, round_index: int) -> None:
    big = restamp(path)
    for casd in run.in_turn(round_index, run.casds):
        seconds = transfer(run, casd, "upload.resumable", casd.put_resumable, big)
        run.results.add(
            f"upload.resumable.{casd.name}",
            f"POST+PATCH /v1/uploads {run.sizes.big_label} [{casd.name}]",
            "MB/s",
            big.size / seconds / MB,
        )
        casd.discard_big(big)


def upload_ratios(run: Run) -> None:
    for casd in run.casds:
        for kind in ("put", "resumable"):
            key = f"upload.{kind}.{casd.name}"
            run.results.ratio(
                f"{key}/limits", f"{kind} {casd.name} / min(limits)", key, "limits.min"
            )
            for peer in run.peers:
                run.results.ratio(
                    f"{key}/{peer.name}",
                    f"{kind} {casd.name} / {peer.name} PUT",
                    key,
                    f"upload.put.{peer.name}",
                )


# --- small uploads ----------------------------------------------------------------------------


def record_load(run: Run, key: str, label: str, result: LoadResult, unit: str = "req/s") -> None:
    results = run.results
    results.add(key, label, unit, result.rate, client_cpu=round(result.client_cpu, 3))
    results.add(f"{key}.p50", f"{label} p50", "ms", result.p50_ms)
    results.add(f"{key}.p99", f"{label} p99", "ms", result.p99_ms)


def section_small(run: Run) -> None:
    sizes = run.sizes
    label = f"{sizes.small_size // 1024} KiB PUT x{sizes.small_count}, c{sizes.small_concurrency}"
    for round_index in range(sizes.rounds):
        for target in run.in_turn(round_index):
            small = small_set(sizes.small_count, sizes.small_size)
            settle()
            meter = run.cpu_meter(target)
            with run.profiled(target, "small-put"):
                result = run_async(
                    run_load(
                        target.port,
                        target.small_put(small),
                        sizes.small_count,
                        sizes.small_concurrency,
                        sizes.load_seconds,
                    )
                )
            record_load(run, f"small.put.{target.name}", f"{label} [{target.name}]", result)
            if meter is not None:
                record_cpu(
                    run, f"small.put.{target.name}", f"[{target.name}]", meter(), result.count
                )
            run.stored_small[target.name] = small
    for casd in run.casds:
        key = f"small.put.{casd.name}"
        run.results.ratio(
            f"{key}/limits", f"{casd.name} / durable files limit", key, "limits.durable"
        )
        for peer in run.peers:
            run.results.ratio(
                f"{key}/{peer.name}", f"{casd.name} / {peer.name}", key, f"small.put.{peer.name}"
            )


# --- downloads --------------------------------------------------------------------------------


def ensure_stored(run: Run) -> None:
    """What the download section reads: uploaded here if the upload sections did not run."""
    missing_big = [target for target in run.targets if target.name not in run.stored_big]
    if missing_big:
        big = restamp(run.big_file())
        for target in missing_big:
            target.put_big(big)
            run.stored_big[target.name] = big
    for target in run.targets:
        if target.name not in run.stored_small:
            small = small_set(run.sizes.small_count, run.sizes.small_size)
            operation = target.small_put(small)
            count, concurrency = run.sizes.small_count, run.sizes.small_concurrency
            run_async(run_load(target.port, operation, count, concurrency, 120))
            run.stored_small[target.name] = small


def section_download(run: Run) -> None:
    sizes = run.sizes
    ensure_stored(run)
    small_label = (
        f"{sizes.small_size // 1024} KiB GET x{sizes.small_count}, c{sizes.small_concurrency}"
    )
    for round_index in range(sizes.rounds):
        for target in run.in_turn(round_index):
            big = run.stored_big[target.name]
            seconds = transfer(run, target, "download.get", target.get_big, big)
            run.results.add(
                f"download.get.{target.name}",
                f"GET {sizes.big_label}, one stream [{target.name}]",
                "MB/s",
                sizes.big / seconds / MB,
            )
        for target in run.in_turn(round_index):
            with run.profiled(target, "download-small"):
                result = wrk_get(
                    target.port,
                    target.small_paths(run.stored_small[target.name]),
                    sizes.small_count,
                    sizes.small_concurrency,
                    run.workdir,
                    max_seconds=sizes.load_seconds,
                )
            key = f"download.small.{target.name}"
            run.results.add(key, f"{small_label} [{target.name}]", "req/s", result.rate)
            run.results.add(f"{key}.p50", f"{small_label} p50 [{target.name}]", "ms", result.p50_ms)
            run.results.add(f"{key}.p99", f"{small_label} p99 [{target.name}]", "ms", result.p99_ms)
    for casd in run.casds:
        for peer in run.peers:
            for kind, what in (("get", "GET big"), ("small", "small GETs")):
                key = f"download.{kind}.{casd.name}"
                run.results.ratio(
                    f"{key}/{peer.name}",
                    f"{what} {casd.name} / {peer.name}",
                    key,
                    f"download.{kind}.{peer.name}",
                )


# --- names ------------------------------------------------------------------------------------


def section_names(run: Run) -> None:
    sizes = run.sizes
    casds = run.casds if run.has_names else []
    registries = [peer for peer in run.peers if isinstance(peer, Registry)]
    books: dict[str, Any] = {}
    for casd in casds:
        books[casd.name] = run_async(names.casd_setup(casd, sizes.name_count, "bench"))
    for registry in registries:
        books[registry.name] = run_async(names.registry_setup(registry, sizes.name_count, "t"))
    for round_index in range(sizes.rounds):
        for target in run.in_turn(round_index, [*casds, *registries]):
            names_round(run, target, books[target.name])
    for casd in casds:
        lost = run_async(names.casd_lost_flips(casd, books[casd.name]))
        run.results.add(f"names.lost.{casd.name}", f"flips lost [{casd.name}]", "flips", lost)
    names_ratios(run, casds, registries)


def names_round(run: Run, target: Target, book: Any) -> None:
    sizes = run.sizes
    if isinstance(target, Casd):
        paths, headers = names.casd_resolve_paths(book), {}
        distinct, hot = names.casd_flip(target, book, False), names.casd_flip(target, book, True)
    else:
        paths, headers = names.registry_resolve_paths(book), names.REGISTRY_ACCEPT
        distinct, hot = names.registry_flip(book, False), names.registry_flip(book, True)
    meter = run.cpu_meter(target)
    with run.profiled(target, "names-resolve"):
        resolved = wrk_get(
            target.port,
            paths,
            sizes.resolves,
            sizes.resolve_concurrency,
            run.workdir,
            max_seconds=sizes.load_seconds,
            headers=headers,
        )
    key = f"names.resolve.{target.name}"
    label = f"resolve x{sizes.resolves}, c{sizes.resolve_concurrency} [{target.name}]"
    run.results.add(key, label, "req/s", resolved.rate)
    run.results.add(f"{key}.p99", f"{label} p99", "ms", resolved.p99_ms)
    if meter is not None:
        record_cpu(run, key, f"resolve [{target.name}]", meter(), resolved.requests)
    for kind, operation, count in (
        ("distinct", distinct, sizes.flips),
        ("hot", hot, sizes.hot_flips),
    ):
        with run.profiled(target, f"names-flip-{kind}"):
            result = run_async(
                run_load(target.port, operation, count, sizes.flip_concurrency, sizes.load_seconds)
            )
        flips = result.outcomes["ok"] / result.seconds
        where = f"{sizes.name_count} names" if kind == "distinct" else "1 hot name"
        key = f"names.flip_{kind}.{target.name}"
        label = f"flips on {where}, c{sizes.flip_concurrency} [{target.name}]"
        run.results.add(key, label, "flips/s", flips, client_cpu=round(result.client_cpu, 3))
        run.results.add(f"{key}.412", f"{label} 412s", "count", result.outcomes["412"])


def names_ratios(run: Run, casds: list[Casd], registries: list[Registry]) -> None:
    for casd in casds:
        for registry in registries:
            for kind, what in (
                ("resolve", "resolves / tag GETs"),
                ("flip_distinct", "flips / tag PUTs"),
                ("flip_hot", "hot flips / hot tag PUTs"),
            ):
                key = f"names.{kind}.{casd.name}"
                run.results.ratio(
                    f"{key}/{registry.name}",
                    f"{what} {casd.name} / {registry.name}",
                    key,
                    f"names.{kind}.{registry.name}",
                )


# --- memory -----------------------------------------------------------------------------------


def section_memory(run: Run) -> None:
    sizes = run.sizes
    files = {
        "small": run.big_file("memory-small.bin", sizes.memory_small),
        "big": run.big_file(),
    }
    labels = {"small": f"{sizes.memory_small // MIB} MiB", "big": sizes.big_label}
    for casd in run.casds:
        rss = casd.rss()
        run.results.add(
            f"memory.idle.{casd.name}", f"RSS idle [{casd.name}]", "MiB", rss.current_mib()
        )
        warm_up(run, casd, files["small"])
        for _ in range(sizes.memory_rounds):
            for which, path in files.items():
                memory_round(run, casd, path, f"{which}", labels[which])
        for kind in ("put", "get", "resumable"):
            run.results.derive(
                f"memory.{kind}.growth.{casd.name}",
                f"peak RSS growth {labels['small']} -> {labels['big']}, {kind} [{casd.name}]",
                "MiB",
                [f"memory.{kind}.big.{casd.name}", f"memory.{kind}.small.{casd.name}"],
                lambda big, small: big - small,
            )


def warm_up(run: Run, casd: Casd, path: Path) -> None:
    """One untimed round trip first: thread pools and allocator arenas grow on first use,
    which is not growth with the blob's size."""
    blob = restamp(path)
    casd.put_big(blob)
    casd.get_big(blob)
    if run.has_uploads:
        resumable = restamp(path)
        casd.put_resumable(resumable)
        casd.discard_big(resumable)
    casd.discard_big(blob)


def memory_round(run: Run, casd: Casd, path: Path, which: str, label: str) -> None:
    rss = casd.rss()
    blob = restamp(path)
    steps: list[tuple[str, Any]] = [("put", casd.put_big), ("get", casd.get_big)]
    if run.has_uploads:
        steps.append(("resumable", None))
    for kind, action in steps:
        settle()
        rss.reset()
        if action is None:
            resumable = restamp(path)
            casd.put_resumable(resumable)
            casd.discard_big(resumable)
        else:
            action(blob)
        run.results.add(
            f"memory.{kind}.{which}.{casd.name}",
            f"peak RSS during {kind.upper()} {label} [{casd.name}]",
            "MiB",
            rss.peak_mib(),
        )
    casd.discard_big(blob)
