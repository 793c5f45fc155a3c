#!/usr/bin/env bash
# Installs promtool (Debian's prometheus package) if missing: the metrics
# test checks `/metrics` with `promtool check metrics` when it is present.
# `.ci/run` calls this before the tests.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
echo "installing promtool (Debian's prometheus package)" >&2
if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus
else
    sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends prometheus
fi
# The package may start a Prometheus server; the tests need only promtool.
if command -v systemctl >/dev/null 2>&1; then
    systemctl stop prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null
