#!/usr/bin/env bash
# Installs pymesos 0.3.15, a real Mesos HTTP scheduler client from PyPI,
# into a private directory for the Mesos-compatibility test
# (ops/tests/mesos.rs), without touching the system's Python packages.
#
# pymesos depends on http-parser, whose C extension does not build on
# recent Pythons; the package ships a pure-Python parser that pymesos'
# import falls back to. So: pymesos, addict and six with --no-deps, and
# http-parser's Python modules copied from its source release.
#
# Usage: install-pymesos.sh DEST   (prints DEST when ready; idempotent)
set -euo pipefail
dest=${1:?usage: install-pymesos.sh DEST}
if [ -f "$dest/.installed-0.3.15" ]; then
    echo "$dest"
    exit 0
fi
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 or pip is missing: installing Debian's python3-pip" >&2
    (apt-get update -qq && apt-get install -y -qq python3 python3-pip) >&2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$dest" pymesos==0.3.15 addict==2.4.0 six==1.17.0 >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$tmp" http-parser==0.9.0 >&2
tar -xzf "$tmp"/http-parser-0.9.0.tar.gz -C "$tmp"
rm -rf "$dest/http_parser"
mkdir -p "$dest/http_parser"
cp "$tmp"/http-parser-0.9.0/http_parser/*.py "$dest/http_parser/"
PYTHONPATH="$dest" python3 -c 'import pymesos, http_parser.http as h; assert h.HttpParser.__module__ == "http_parser.pyparser", h.HttpParser.__module__' >&2
touch "$dest/.installed-0.3.15"
echo "$dest"
