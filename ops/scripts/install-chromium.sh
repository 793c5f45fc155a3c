#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the web UI's browser test
# (ops/tests/ui.rs). Idempotent: does nothing when both are on the machine.
# The test drives Chromium headless through chromedriver (WebDriver); no
# browser is downloaded by any test tool.
#
# Usage: install-chromium.sh   (prints the two paths when ready)
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo /usr/bin/chromium /usr/bin/chromedriver
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "installing Debian's chromium and chromium-driver" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
/usr/bin/chromium --version >&2
/usr/bin/chromedriver --version >&2
echo /usr/bin/chromium /usr/bin/chromedriver
