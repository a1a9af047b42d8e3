#!/usr/bin/env bash
# The test command: set up .venv when missing, then lint and run the whole suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
# The web page's test drives Debian's chromium (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/test.sh: /usr/bin/chromium is missing (sudo apt-get install chromium); tests/service/test_serve_browser.py needs it" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# One worker per core and one more (at most 4), as the workers often wait on servers and subprocesses;
# each test file runs whole in one worker, so its module fixtures (an indexed gallery, a calibrated
# network) are made once.
workers=$(( $(nproc) + 1 ))
if [ "$workers" -gt 4 ]; then workers=4; fi
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
