"""The servers under test: casd, and the peers nginx (WebDAV PUT) and the OCI registry.

Each runs on a loopback port chosen at run time, with its configuration and data in the run's
temporary directory, started and stopped by the harness. A target knows how its own protocol
does each workload: one big upload or download (with curl), one small upload (an operation of
the load generator), the paths to GET, and, for casd and the registry, name resolution and
flips (a tag PUT for the registry).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.data import BigFile, SmallSet
from bench.httpload import Connection, Operation
from bench.procs import LOOPBACK, PeakRss, Service, free_port, run

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
CURL_FORMAT = "%{http_code} %{time_total} %{size_upload} %{size_download}"
BIG_TIMEOUT = 300


def curl(*args: str) -> tuple[int, float, int, int]:
    """Run curl; (status, seconds, bytes up, bytes down) as curl itself timed them."""
    output = run(["curl", "-sS", "-o", "/dev/null", "-w", CURL_FORMAT, *args], BIG_TIMEOUT)
    status, seconds, up, down = output.split()
    return int(status), float(seconds), int(float(up)), int(float(down))


def expect_status(what: str, status: int, *wanted: int) -> None:
    if status not in wanted:
        raise RuntimeError(f"{what}: HTTP {status}, expected {wanted}")


class Target:
    """A server under test."""

    name = "target"
    has_names = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.service: Service | None = None

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def url(self, path: str) -> str:
        return self.base + path

    # Workloads, implemented by each target.
    def put_big(self, big: BigFile) -> float:
        raise NotImplementedError

    def get_big(self, big: BigFile) -> float:
        raise NotImplementedError

    def discard_big(self, big: BigFile) -> None:
        """Free the disk space of a big upload that is not read again."""

    def small_put(self, small: SmallSet) -> Operation:
        raise NotImplementedError

    def small_paths(self, small: SmallSet) -> list[str]:
        raise NotImplementedError

    def get_headers(self) -> dict[str, str]:
        return {}


class Casd(Target):
    """``casd serve --workers N`` over a database of its own in the run's PostgreSQL."""

    has_names = True

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        workers: int,
        env: dict[str, str],
        kind: str = "casd",
    ):
        self.name = f"{kind}-w{workers}"
        super().__init__(workdir)
        self.workers = workers
        self.data_dir = self.workdir / "data"
        command = [
            sys.executable,
            "-m",
            "casd",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            database_url,
            "--listen",
            f"{LOOPBACK}:{self.port}",
            "--workers",
            str(workers),
        ]
        # The casd of this checkout, unless --casd-env PYTHONPATH=... names another tree.
        env = {"PYTHONPATH": str(REPOSITORY_ROOT), **env}
        self.service = Service(self.name, command, self.workdir / "server.log", env)
        self.token = ""

    def start(self) -> None:
        assert self.service is not None
        self.service.start()
        self.service.wait_http(self.url("/readyz"), timeout=90)
        self.token = (self.data_dir / "admin.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def rss(self) -> PeakRss:
        assert self.service is not None
        return PeakRss(self.service.tree())

    def probe(self, method: str, path: str) -> str:
        """The problem code (or status) of a request: tells which endpoints are in the tree."""
        request = urllib.request.Request(self.url(path), method=method, headers=self.auth)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return str(answer.status)
        except urllib.error.HTTPError as error:
            try:
                return str(json.loads(error.read()).get("code", error.code))
            except ValueError:
                return str(error.code)

    @property
    def has_uploads(self) -> bool:
        return self.probe("DELETE", "/v1/uploads/" + "0" * 32) == "upload-not-found"

    def names_ready(self) -> bool:
        return self.probe("GET", "/v1/names/bench/probe") == "name-not-found"

    def put_big(self, big: BigFile) -> float:
        status, seconds, _up, _ = curl(
            "-T", str(big.path), "-H", self._auth_header(), self.url(f"/v1/blobs/{big.digest}")
        )
        expect_status("casd PUT", status, 201)
        return seconds

    def put_resumable(self, big: BigFile) -> float:
        """POST /v1/uploads to open an upload, then one PATCH with every byte and ?1."""
        status, headers, elapsed = self._post_upload(big)
        expect_status("casd POST /v1/uploads", status, 201)
        location = headers["Location"]
        status, seconds, _, _ = curl(
            "-T",
            str(big.path),
            "-X",
            "PATCH",
            "-H",
            self._auth_header(),
            "-H",
            "Upload-Offset: 0",
            "-H",
            "Upload-Complete: ?1",
            "-H",
            f"Casd-Digest: {big.digest}",
            self.url(location),
        )
        expect_status("casd PATCH", status, 201)
        return elapsed + seconds

    def _post_upload(self, big: BigFile) -> tuple[int, Any, float]:
        headers = {
            **self.auth,
            "Upload-Length": str(big.size),
            "Casd-Digest": big.digest,
            "Content-Length": "0",
        }
        request = urllib.request.Request(
            self.url("/v1/uploads"), method="POST", headers=headers, data=b""
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, time.perf_counter() - started

    def get_big(self, big: BigFile) -> float:
        status, seconds, _, down = curl(self.url(f"/v1/blobs/{big.digest}"))
        expect_status("casd GET", status, 200)
        if down != big.size:
            raise RuntimeError(f"casd GET: {down} of {big.size} bytes")
        return seconds

    def discard_big(self, big: BigFile) -> None:
        # The bench's own throwaway store: drop the bytes of a blob no workload reads again.
        path = self.data_dir / "blobs" / "blake3" / big.hex[:2] / big.hex
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _auth_header(self) -> str:
        return f"Authorization: Bearer {self.token}"

    def small_put(self, small: SmallSet) -> Operation:
        auth = self.auth

        async def put(connection: Connection, index: int) -> str:
            digest = small.digests[index]
            reply = await connection.request(
                "PUT", f"/v1/blobs/{digest}", auth, small.bodies[index]
            )
            expect_status("casd small PUT", reply.status, 201)
            return "ok"

        return put

    def small_paths(self, small: SmallSet) -> list[str]:
        return [f"/v1/blobs/{digest}" for digest in small.digests]

    @contextlib.contextmanager
    def profiling(self, directory: Path | None, label: str) -> Iterator[None]:
        """Record a py-spy flame graph of the server while the block runs (--profile)."""
        if directory is None or self.service is None:
            yield
            return
        directory.mkdir(parents=True, exist_ok=True)
        output = directory / f"{label}-{self.name}.txt"
        recorder = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.service.pid),
                "--subprocesses",
                "--idle",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(output),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


NGINX_CONFIG = """
{user}
worker_processes auto;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port};
        root {dir}/root;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


class Nginx(Target):
    """nginx with WebDAV PUT: a raw upload written to a file, no hashing, no fsync."""

    name = "nginx"

    def start(self) -> None:
        (self.workdir / "root").mkdir(exist_ok=True)
        config = self.workdir / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        config.write_text(
            NGINX_CONFIG.format(user=user, dir=self.workdir, host=LOOPBACK, port=self.port)
        )
        command = ["nginx", "-p", str(self.workdir), "-c", str(config)]
        self.service = Service(self.name, command, self.workdir / "server.log", {})
        self.service.start()
        self.service.wait_http(self.url("/"), ok=(200, 403, 404))

    def put_big(self, big: BigFile) -> float:
        status, seconds, _, _ = curl("-T", str(big.path), self.url(f"/big/{big.hex}"))
        expect_status("nginx PUT", status, 201, 204)
        return seconds

    def get_big(self, big: BigFile) -> float:
        status, seconds, _, down = curl(self.url(f"/big/{big.hex}"))
        expect_status("nginx GET", status, 200)
        if down != big.size:
            raise RuntimeError(f"nginx GET: {down} of {big.size} bytes")
        return seconds

    def discard_big(self, big: BigFile) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "root" / "big" / big.hex).unlink()

    def small_put(self, small: SmallSet) -> Operation:
        async def put(connection: Connection, index: int) -> str:
            path = f"/small/{small.hexes[index]}"
            reply = await connection.request("PUT", path, None, small.bodies[index])
            expect_status("nginx small PUT", reply.status, 201, 204)
            return "ok"

        return put

    def small_paths(self, small: SmallSet) -> list[str]:
        return [f"/small/{hexdigest}" for hexdigest in small.hexes]


REGISTRY_CONFIG = """
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {dir}/storage
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}:{port}
"""

REPOSITORY = "bench/images"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def path_of(location: str) -> str:
    """The path and query of a Location header that may be an absolute URL."""
    if location.startswith("http"):
        return "/" + location.split("/", 3)[3]
    return location


class Registry(Target):
    """The Docker/OCI distribution registry (Debian's docker-registry), filesystem storage."""

    name = "registry"
    has_names = True

    def start(self) -> None:
        config = self.workdir / "config.yml"
        config.write_text(REGISTRY_CONFIG.format(dir=self.workdir, host=LOOPBACK, port=self.port))
        command = ["docker-registry", "serve", str(config)]
        self.service = Service(self.name, command, self.workdir / "server.log", {})
        self.service.start()
        self.service.wait_http(self.url("/v2/"))

    def _start_upload(self) -> str:
        request = urllib.request.Request(
            self.url(f"/v2/{REPOSITORY}/blobs/uploads/"), method="POST", data=b""
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            expect_status("registry POST upload", answer.status, 202)
            return path_of(answer.headers["Location"])

    def put_big(self, big: BigFile) -> float:
        """A monolithic upload: POST opens it, one PUT with the digest carries every byte."""
        started = time.perf_counter()
        location = self._start_upload()
        opened = time.perf_counter() - started
        separator = "&" if "?" in location else "?"
        status, seconds, _, _ = curl(
            "-T",
            str(big.path),
            "-H",
            "Content-Type: application/octet-stream",
            self.url(f"{location}{separator}digest={big.sha256}"),
        )
        expect_status("registry PUT", status, 201)
        return opened + seconds

    def get_big(self, big: BigFile) -> float:
        status, seconds, _, down = curl(self.url(f"/v2/{REPOSITORY}/blobs/{big.sha256}"))
        expect_status("registry GET", status, 200)
        if down != big.size:
            raise RuntimeError(f"registry GET: {down} of {big.size} bytes")
        return seconds

    def discard_big(self, big: BigFile) -> None:
        hexdigest = big.sha256.removeprefix("sha256:")
        blob_dir = self.workdir / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2]
        shutil.rmtree(blob_dir / hexdigest, ignore_errors=True)

    def small_put(self, small: SmallSet) -> Operation:
        async def put(connection: Connection, index: int) -> str:
            await upload_blob(connection, small.bodies[index], small.sha256s[index])
            return "ok"

        return put

    def small_paths(self, small: SmallSet) -> list[str]:
        return [f"/v2/{REPOSITORY}/blobs/{sha}" for sha in small.sha256s]


async def upload_blob(connection: Connection, body: bytes, sha256: str) -> None:
    """The registry's monolithic upload: POST, then PUT with the digest and the bytes."""
    reply = await connection.request("POST", f"/v2/{REPOSITORY}/blobs/uploads/", None, b"")
    expect_status("registry POST upload", reply.status, 202)
    location = path_of(reply.headers["location"])
    separator = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    reply = await connection.request("PUT", f"{location}{separator}digest={sha256}", headers, body)
    expect_status("registry PUT blob", reply.status, 201)
