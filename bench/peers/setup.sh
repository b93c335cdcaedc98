#!/usr/bin/env bash
# Install the peers and load generators that `python -m bench` compares casd with, from Debian
# packages. The harness itself installs nothing: run this once (as root, or with sudo).
#   nginx + WebDAV (PUT without hashing: the practical ceiling of a raw upload)
#   docker-registry (the Docker/OCI distribution registry: monolithic blob upload, manifests)
#   wrk (HTTP load generator for GETs), curl (single streams)
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# nginx-core carries the dav module (PUT/DELETE/MKCOL) built in; libnginx-mod-http-dav-ext adds
# PROPFIND and friends, which the benchmark does not need but a real WebDAV setup would.
$SUDO apt-get install -y -q --no-install-recommends \
    nginx-core libnginx-mod-http-dav-ext docker-registry wrk curl
# The packages start system services on their default ports; the harness runs its own instances
# on free loopback ports with configs in a temp dir, so stop the system ones if they started.
for service in nginx docker-registry; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        $SUDO systemctl stop "$service" || true
    fi
done
echo "peers installed: $(command -v nginx) $(command -v docker-registry) $(command -v wrk) $(command -v curl)"
