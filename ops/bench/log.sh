#!/usr/bin/env bash
# `orrery bench log` with etcd 3.4 (Debian's etcd-server package) as the peer:
# installs etcd if missing, builds Orrery in release mode, runs the matrix.
# Extra arguments go to `orrery bench log` (e.g. --duration 10s --json).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v etcd >/dev/null 2>&1; then
    echo "installing etcd-server (Debian package) for the side-by-side run" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq etcd-server
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq etcd-server
    fi
fi
# The package may start a system etcd; the benchmark runs its own on free
# ports, and a quiet machine gives steadier figures.
if command -v systemctl >/dev/null 2>&1; then
    systemctl stop etcd >/dev/null 2>&1 || true
fi

cargo build --release -p orrery-ops
exec ./target/release/orrery bench log --etcd "$(command -v etcd)" "$@"
