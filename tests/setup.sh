#!/usr/bin/env bash
# Installs what the test suite needs beside Rust: Debian's Chromium and
# chromedriver (the dashboard's browser test), systemd-analyze (the unit file
# check), promtool (the metrics test), and a Python venv (.venv) with the
# official Svix SDK and the Standard Webhooks library, at pinned versions.
# Idempotent: a second run with everything in place does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver
fi

# systemd-analyze checks the unit file (tests/cli.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_install systemd
fi

# promtool (Debian's prometheus package): the metrics test checks the /metrics
# output with `promtool check metrics`.
if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi

SVIX_VERSION=2.9.1
STANDARDWEBHOOKS_VERSION=1.1.0

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi

want="svix==${SVIX_VERSION} standardwebhooks==${STANDARDWEBHOOKS_VERSION}"
if [ -x .venv/bin/python ] && .venv/bin/python - "$want" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for req in sys.argv[1].split():
    name, v = req.split("==")
    assert version(name) == v, (name, version(name), v)
PY
  exit 0
fi
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check $want
echo "tests/setup.sh: .venv ready ($want)"
