#!/usr/bin/env bash
# Installs what Lazarus, its demo and its tests need on a fresh Debian machine (idempotent).
# Run by the README's two commands; safe to run by hand.
set -euo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v sha256sum >/dev/null || need_apt+=(coreutils)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
command -v pgbackrest >/dev/null || need_apt+=(pgbackrest)   # benchmarks compare with it
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null || need_apt+=(chromium)                 # the web page's tests
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v podman >/dev/null || need_apt+=(podman)                     # the container image's test
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)           # its base image, offline
if ((${#need_apt[@]})); then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# Debian's packages start their own services; Lazarus's demo and tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    as_root systemctl stop pgbouncer || true
fi

# Interop tests decrypt with Python's cryptography; storage tests run a real S3 server (moto).
if ! python3 -c "import cryptography" 2>/dev/null; then
    python3 -m pip install --quiet cryptography
fi
if ! command -v moto_server >/dev/null; then
    python3 -m pip install --quiet "moto[server]"
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
    exit 1
fi
