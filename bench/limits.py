"""What this machine allows: BLAKE3 on one thread, disk write with fsync, loopback TCP, and
small files made durable (the ceiling of small durable uploads)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import blake3

from bench.data import MIB
from bench.procs import LOOPBACK

UPDATE = MIB


def pattern(size: int) -> bytearray:
    """Incompressible bytes to hash, write and send (generated once per run)."""
    return bytearray(blake3.blake3(b"casd bench limits").digest(length=size))


def blake3_rate(buffer: bytearray, total: int) -> float:
    """Bytes per second hashing ``total`` bytes of ``buffer`` in 1 MiB updates, one thread."""
    view = memoryview(buffer)
    hasher = blake3.blake3()  # max_threads=1: the way casd hashes one stream
    started = time.perf_counter()
    done = 0
    while done < total:
        offset = done % len(buffer)
        hasher.update(view[offset : offset + UPDATE])
        done += UPDATE
    hasher.digest()
    return total / (time.perf_counter() - started)


def disk_rate(buffer: bytearray, total: int, directory: Path) -> float:
    """Bytes per second writing ``total`` bytes in 1 MiB writes to a new file, fsync included."""
    view = memoryview(buffer)
    path = directory / "limits-disk.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        started = time.perf_counter()
        done = 0
        while done < total:
            offset = done % len(buffer)
            done += os.write(fd, view[offset : offset + UPDATE])
        os.fsync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return total / seconds


def tcp_rate(buffer: bytearray, total: int) -> float:
    """Bytes per second through one loopback TCP connection (sender and receiver threads)."""
    with socket.create_server((LOOPBACK, 0)) as server:
        port = server.getsockname()[1]
        received = 0

        def receive() -> None:
            nonlocal received
            connection, _ = server.accept()
            sink = bytearray(UPDATE)
            with connection:
                while received < total:
                    count = connection.recv_into(sink)
                    if not count:
                        break
                    received += count

        receiver = threading.Thread(target=receive)
        receiver.start()
        view = memoryview(buffer)
        with socket.create_connection((LOOPBACK, port)) as sender:
            started = time.perf_counter()
            sent = 0
            while sent < total:
                offset = sent % len(buffer)
                sender.sendall(view[offset : offset + UPDATE])
                sent += UPDATE
            receiver.join()
            seconds = time.perf_counter() - started
    if received != total:
        raise RuntimeError(f"loopback TCP: received {received} of {total} bytes")
    return total / seconds


def durable_publish_rate(directory: Path, count: int, size: int, threads: int) -> float:
    """Small files made durable per second the way a blob store must: write to a staging file,
    fsync it, rename it into a fan-out directory, fsync that directory; ``threads`` at once."""
    staging, published = directory / "limits-staging", directory / "limits-published"
    fanout = [published / f"{index:02x}" for index in range(256)]
    for folder in (staging, *fanout):
        folder.mkdir(parents=True, exist_ok=True)
    body = bytes(pattern(size))

    def publish(index: int) -> None:
        path = staging / f"{index}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        folder = fanout[index % len(fanout)]
        path.replace(folder / str(index))
        directory_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            list(pool.map(publish, range(count)))
            seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(published, ignore_errors=True)
    return count / seconds
