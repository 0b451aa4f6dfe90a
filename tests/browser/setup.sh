#!/usr/bin/env bash
# Installs what the JupyterLab browser test of tests/test_panels.py needs, where it can:
# Debian's Chromium (as root, with apt-get) and playwright-core from npm (no browser download).
# Safe to run repeatedly; never fails the build: without them the browser test skips with a message.
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "tests/browser/setup.sh: could not install chromium with apt-get; the browser test will skip"
  else
    echo "tests/browser/setup.sh: chromium not found and cannot apt-get it (not root); the browser test will skip"
  fi
fi
if command -v npm >/dev/null 2>&1; then
  [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1 \
    || npm install --no-audit --no-fund --loglevel=error >/dev/null 2>&1 \
    || echo "tests/browser/setup.sh: npm could not install playwright-core; the browser test will skip"
else
  echo "tests/browser/setup.sh: npm not found; the browser test will skip"
fi
exit 0
