#!/usr/bin/env bash
# Installs what Lazarus needs on a fresh Debian machine (idempotent). Run by the README's
# two commands; safe to run by hand.
set -euo pipefail

need_apt=()
command -v sha256sum >/dev/null || need_apt+=(coreutils)
command -v curl >/dev/null || need_apt+=(curl)

if ((${#need_apt[@]})); then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
    exit 1
fi
