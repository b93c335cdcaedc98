"""``python -m bench --s3``: casd over SeaweedFS against aiobotocore talking to the same SeaweedFS
directly, side by side in one run, as ratios (design study ``scale-out.md`` §5.8-5.9).

One SeaweedFS (``weed server -s3``, tests/seaweed.py) and one embedded PostgreSQL on loopback;
one ``casd serve --workers 2 --blob-store s3://casd/bench``. The raw client is aiobotocore with
the configuration casd uses itself (no payload signing, CRC32 part checksums, path style), in
this process, created before the clock starts. Every round runs each workload on both, the
order rotating from round to round; figures are medians, ratios are taken round by round.

On this shared 2-core machine SeaweedFS needs 10-12 CPU s per GiB written, so large uploads are
bound by the object store, not by casd or the client: read the ratios, not the MB/s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import blake3
from types_aiobotocore_s3 import S3Client

from bench.data import MIB, BigFile, make_big_file, restamp, small_set
from bench.httpload import run_load
from bench.procs import CpuMeter
from bench.results import Results, Target
from bench.targets import Casd
from casd.stores.s3 import whole_chunks
from casd.stores.s3_client import client_config
from tests.seaweed import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS

CASD_PREFIX = "bench-casd"
RAW_PREFIX = "bench-raw/"
PART = 16 * MIB  # the raw client's parts: casd's own part size
PARTS_IN_FLIGHT = 4
RANGE_SIZE = MIB
RANGE_COUNT = 256
RANGE_CONCURRENCY = 8
SMALL_SIZE = 64 * 1024
SMALL_CONCURRENCY = 32
OPERATION_TIMEOUT = 600.0  # one workload of one side, at most
S3_BUFFER = 512 * MIB


@dataclass(frozen=True)
class S3Sizes:
    big: int
    rounds: int
    small_count: int

    @property
    def big_label(self) -> str:
        return f"{self.big // MIB} MiB" if self.big < 1024 * MIB else f"{self.big // 1024**3} GiB"


FULL = S3Sizes(big=1024 * MIB, rounds=3, small_count=2000)
QUICK = S3Sizes(big=256 * MIB, rounds=2, small_count=500)


class RawS3:
    """aiobotocore against the same SeaweedFS: the baseline of every ratio."""

    def __init__(self, seaweed: SeaweedFS) -> None:
        self.seaweed = seaweed

    def run(self, work: Callable[[S3Client], Awaitable[float]]) -> float:
        async def main() -> float:
            async with self.seaweed.session.create_client(
                "s3",
                endpoint_url=self.seaweed.endpoint,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                config=client_config(path_style=True),
            ) as client:
                await client.head_bucket(Bucket=BUCKET)  # connected before the clock starts
                return await asyncio.wait_for(work(client), OPERATION_TIMEOUT)

        return asyncio.run(main())

    @staticmethod
    async def upload(client: S3Client, path: Path, key: str) -> float:
        """The file through a multipart upload: 16 MiB parts read as a stream, 4 in flight."""
        started = time.perf_counter()
        created = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
        upload_id = created["UploadId"]
        parts: list[Any] = []
        inflight: set[asyncio.Task[None]] = set()

        async def send(number: int, body: bytes) -> None:
            answer = await client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            if answer.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = answer["ChecksumCRC32"]
            parts.append(part)

        with path.open("rb") as file:
            number = 1
            while body := await asyncio.to_thread(file.read, PART):
                if len(inflight) >= PARTS_IN_FLIGHT:
                    done, inflight = await asyncio.wait(inflight, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()
                inflight.add(asyncio.create_task(send(number, body)))
                number += 1
        await asyncio.gather(*inflight)
        parts.sort(key=lambda part: part["PartNumber"])
        await client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        return time.perf_counter() - started

    @staticmethod
    async def get(client: S3Client, key: str, size: int, verify: str | None) -> float:
        """A streamed GET; with ``verify`` (a digest) hashed one chunk behind, as casd does."""
        started = time.perf_counter()
        answer = await client.get_object(Bucket=BUCKET, Key=key)
        hasher = blake3.blake3()
        hashing: asyncio.Future[Any] | None = None
        received = 0
        async with answer["Body"] as body:
            async for chunk in whole_chunks(body):  # 1 MiB chunks, as casd reads them
                received += len(chunk)
                if verify is not None:
                    if hashing is not None:
                        await hashing
                    hashing = asyncio.ensure_future(asyncio.to_thread(hasher.update, chunk))
        if hashing is not None:
            await hashing
        if received != size or (verify and f"blake3:{hasher.hexdigest()}" != verify):
            raise RuntimeError(f"raw GET {key}: wrong bytes")
        return time.perf_counter() - started

    @staticmethod
    async def ranged(client: S3Client, key: str, data: bytes, offsets: list[int]) -> float:
        """Ranged GETs of 1 MiB at concurrency 8, every byte checked; requests per second."""
        queue = list(offsets)

        async def worker() -> None:
            while queue:
                offset = queue.pop()
                answer = await client.get_object(
                    Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{offset + RANGE_SIZE - 1}"
                )
                async with answer["Body"] as body:
                    if await body.read() != data[offset : offset + RANGE_SIZE]:
                        raise RuntimeError("raw ranged GET: wrong bytes")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(RANGE_CONCURRENCY)))
        return len(offsets) / (time.perf_counter() - started)

    @staticmethod
    async def small_puts(client: S3Client, bodies: list[bytes], keys: list[str]) -> float:
        """Distinct 64 KiB conditional PutObjects at concurrency 32; requests per second."""
        queue = list(range(len(bodies)))

        async def worker() -> None:
            while queue:
                index = queue.pop()
                await client.put_object(
                    Bucket=BUCKET, Key=keys[index], Body=bodies[index], IfNoneMatch="*"
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(SMALL_CONCURRENCY)))
        return len(bodies) / (time.perf_counter() - started)

    @staticmethod
    async def delete_prefix(client: S3Client, prefix: str) -> float:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            keys: list[Any] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
        return 0.0


async def casd_ranged(casd: Casd, digest: str, data: bytes, offsets: list[int]) -> float:
    queue = list(offsets)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            while queue:
                offset = queue.pop()
                headers = {"Range": f"bytes={offset}-{offset + RANGE_SIZE - 1}"}
                async with session.get(casd.url(f"/v1/blobs/{digest}"), headers=headers) as got:
                    if got.status != 206 or await got.read() != data[offset : offset + RANGE_SIZE]:
                        raise RuntimeError(f"casd ranged GET: {got.status} or wrong bytes")

        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(RANGE_CONCURRENCY))), OPERATION_TIMEOUT
        )
        return len(offsets) / (time.perf_counter() - started)


class S3Bench:
    """One run: SeaweedFS, casd over it, the raw client, the rounds."""

    def __init__(self, sizes: S3Sizes, results: Results, workdir: Path, casd: Casd) -> None:
        self.sizes = sizes
        self.results = results
        self.workdir = workdir
        self.casd = casd
        self.seaweed: SeaweedFS | None = None
        self.raw: RawS3 | None = None
        self.big_path = workdir / "big.bin"

    def weed_cpu(self) -> CpuMeter:
        assert self.seaweed is not None and self.seaweed.process is not None
        return CpuMeter([self.seaweed.process.pid])

    def round(self, number: int) -> None:
        casd_first = number % 2 == 0
        big = restamp(self.big_path)
        for side in ("casd", "raw") if casd_first else ("raw", "casd"):
            (self.casd_upload if side == "casd" else self.raw_upload)(big, number)
        for side in ("casd", "raw") if casd_first else ("raw", "casd"):
            (self.casd_get if side == "casd" else self.raw_get)(big)
        self.ranges(big, number, casd_first)
        self.resumable()
        self.small(number, casd_first)
        self.discard(big)

    def add_speed(self, key: str, label: str, seconds: float) -> None:
        self.results.add(key, label, "MB/s", self.sizes.big / seconds / 1e6)

    def casd_upload(self, big: BigFile, number: int) -> None:
        rss = self.casd.rss()
        rss.reset()
        cpu, weed = CpuMeter(rss.pids), self.weed_cpu()
        seconds = self.casd.put_big(big)
        gib = self.sizes.big / 1024**3
        self.add_speed("s3.put.casd", f"{self.sizes.big_label} PUT with digest [casd]", seconds)
        self.results.add("s3.cpu.put.casd", "casd CPU per GiB uploaded", "s", cpu.spent()[1] / gib)
        self.results.add(
            "s3.cpu.put.weed", "SeaweedFS CPU per GiB uploaded", "s", weed.spent()[1] / gib
        )
        self.results.add(
            "s3.rss.put.casd", "peak RSS of a casd process, PUT", "MiB", rss.peak_mib()
        )

    def raw_upload(self, big: BigFile, number: int) -> None:
        assert self.raw is not None
        started = time.process_time()
        seconds = self.raw.run(lambda c: RawS3.upload(c, big.path, f"{RAW_PREFIX}big-{number}"))
        gib = self.sizes.big / 1024**3
        self.add_speed("s3.put.raw", f"{self.sizes.big_label} multipart upload [raw]", seconds)
        self.results.add(
            "s3.cpu.put.raw",
            "raw client CPU per GiB uploaded",
            "s",
            (time.process_time() - started) / gib,
        )
        self._raw_key = f"{RAW_PREFIX}big-{number}"

    def casd_get(self, big: BigFile) -> None:
        rss = self.casd.rss()
        rss.reset()
        seconds = self.casd.get_big(big)
        self.add_speed("s3.get.casd", f"{self.sizes.big_label} verified GET [casd]", seconds)
        self.results.add(
            "s3.rss.get.casd", "peak RSS of a casd process, GET", "MiB", rss.peak_mib()
        )

    def raw_get(self, big: BigFile) -> None:
        assert self.raw is not None
        key, size = self._raw_key, self.sizes.big
        plain = self.raw.run(lambda c: RawS3.get(c, key, size, None))
        hashed = self.raw.run(lambda c: RawS3.get(c, key, size, big.digest))
        self.add_speed("s3.get.raw", f"{self.sizes.big_label} GET [raw]", plain)
        self.add_speed("s3.get.raw_hash", f"{self.sizes.big_label} GET + BLAKE3 [raw]", hashed)

    def ranges(self, big: BigFile, number: int, casd_first: bool) -> None:
        assert self.raw is not None
        data = big.path.read_bytes()
        chooser = random.Random(number)
        offsets = [chooser.randrange(0, len(data) - RANGE_SIZE) for _ in range(RANGE_COUNT)]
        key = self._raw_key

        def casd_side() -> None:
            rate = asyncio.run(casd_ranged(self.casd, big.digest, data, offsets))
            self.results.add("s3.range.casd", "1 MiB ranged GETs, c=8 [casd]", "req/s", rate)

        def raw_side() -> None:
            assert self.raw is not None
            rate = self.raw.run(lambda c: RawS3.ranged(c, key, data, offsets))
            self.results.add("s3.range.raw", "1 MiB ranged GETs, c=8 [raw]", "req/s", rate)

        for side in (casd_side, raw_side) if casd_first else (raw_side, casd_side):
            side()

    def resumable(self) -> None:
        big = restamp(self.big_path)
        seconds = self.casd.put_resumable(big)
        self.add_speed("s3.resumable.casd", f"{self.sizes.big_label} POST + PATCH [casd]", seconds)
        self.discard(big)

    def small(self, number: int, casd_first: bool) -> None:
        assert self.raw is not None
        count = self.sizes.small_count
        casd_set, raw_set = small_set(count, SMALL_SIZE), small_set(count, SMALL_SIZE)
        keys = [f"{RAW_PREFIX}small-{number}/{hex}" for hex in raw_set.hexes]

        def casd_side() -> None:
            cpu = CpuMeter(self.casd.rss().pids)
            load = asyncio.run(
                run_load(self.casd.port, self.casd.small_put(casd_set), count, 32, 300)
            )
            label = "64 KiB PUTs, c=32 [casd --workers 2]"
            self.results.add("s3.small.casd", label, "req/s", load.rate)
            per_request = cpu.spent()[1] / max(1, load.count) * 1000
            self.results.add("s3.cpu.small.casd", "casd CPU per 64 KiB PUT", "ms", per_request)

        def raw_side() -> None:
            assert self.raw is not None
            rate = self.raw.run(lambda c: RawS3.small_puts(c, raw_set.bodies, keys))
            self.results.add("s3.small.raw", "64 KiB PutObjects, c=32 [raw]", "req/s", rate)

        for side in (casd_side, raw_side) if casd_first else (raw_side, casd_side):
            side()

    def discard(self, big: BigFile) -> None:
        """Free SeaweedFS's disk: the bench's objects are not read again."""
        assert self.raw is not None
        hexdigest = big.hex
        self.raw.run(
            lambda c: RawS3.delete_prefix(c, f"{CASD_PREFIX}/blake3/{hexdigest[:2]}/{hexdigest}")
        )
        self.raw.run(lambda c: RawS3.delete_prefix(c, f"{RAW_PREFIX}big-"))

    def conclude(self) -> None:
        r = self.results
        r.ratio(
            "s3.put.ratio", "PUT with digest: casd / raw multipart", "s3.put.casd", "s3.put.raw"
        )
        r.ratio("s3.get.ratio", "verified GET: casd / raw GET", "s3.get.casd", "s3.get.raw")
        r.ratio(
            "s3.get.ratio_hash",
            "verified GET: casd / raw GET + BLAKE3",
            "s3.get.casd",
            "s3.get.raw_hash",
        )
        r.ratio(
            "s3.resumable.ratio",
            "resumable: casd / raw multipart",
            "s3.resumable.casd",
            "s3.put.raw",
        )
        r.ratio("s3.range.ratio", "ranged GETs: casd / raw", "s3.range.casd", "s3.range.raw")
        r.ratio("s3.small.ratio", "64 KiB PUTs: casd / raw", "s3.small.casd", "s3.small.raw")
        r.ratio(
            "s3.cpu.put.ratio",
            "CPU per GiB uploaded: casd / raw client",
            "s3.cpu.put.casd",
            "s3.cpu.put.raw",
        )
        rss_limit = 150 + S3_BUFFER / MIB
        r.targets = [
            target
            for target in (
                Target("PUT with digest >= 0.85 x raw", "s3.put.ratio", 0.85),
                Target("verified GET >= 0.85 x raw GET + BLAKE3", "s3.get.ratio_hash", 0.85),
                Target("verified GET >= 0.65 x raw GET", "s3.get.ratio", 0.65),
                Target("resumable >= 0.6 x raw", "s3.resumable.ratio", 0.6),
                Target("1 MiB ranged GETs >= 0.8 x raw", "s3.range.ratio", 0.8),
                Target("64 KiB PUTs >= 0.5 x raw", "s3.small.ratio", 0.5),
                Target("CPU per GiB <= 2.5 x raw client", "s3.cpu.put.ratio", 2.5, True),
                Target(f"RSS <= {rss_limit:.0f} MiB, PUT", "s3.rss.put.casd", rss_limit, True),
                Target(f"RSS <= {rss_limit:.0f} MiB, GET", "s3.rss.get.casd", rss_limit, True),
            )
            if r.get(target.key) is not None
        ]


def sizes_for(quick: bool, rounds: int | None) -> S3Sizes:
    sizes = QUICK if quick else FULL
    return S3Sizes(sizes.big, rounds or sizes.rounds, sizes.small_count)


def run_s3(
    sizes: S3Sizes,
    workdir: Path,
    results: Results,
    database_url: str,
    log: Callable[[str], None],
) -> None:
    """Start SeaweedFS and casd over it, run the rounds, stop everything (by PID)."""
    seaweed = SeaweedFS(workdir / "seaweedfs")
    log(f"starting SeaweedFS on port {seaweed.s3_port}")
    seaweed.start()
    try:
        env = {
            **seaweed.aws_env(),
            "CASD_BLOB_STORE": f"s3://{BUCKET}/{CASD_PREFIX}",
            "CASD_S3_BUFFER": str(S3_BUFFER),
            "CASD_LOG_LEVEL": "WARNING",
        }
        casd = Casd(workdir, database_url, 2, env, kind="casd-s3")
        log(f"starting {casd.name} on port {casd.port}")
        casd.start()
        try:
            bench = S3Bench(sizes, results, workdir, casd)
            bench.seaweed, bench.raw = seaweed, RawS3(seaweed)
            make_big_file(bench.big_path, sizes.big)
            for number in range(sizes.rounds):
                log(f"s3 round {number + 1} of {sizes.rounds}")
                bench.round(number)
            bench.conclude()
            results.meta["s3_sizes"] = sizes.__dict__
        finally:
            casd.stop()
    finally:
        seaweed.stop()
