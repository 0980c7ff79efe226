#!/usr/bin/env bash
# Install Debian's Chromium for the dashboard's browser tests when it is missing
# (Playwright drives it; its own browser download does not work offline).
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q chromium >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi
command -v chromium >/dev/null 2>&1 || { echo "chromium could not be installed; the dashboard browser tests need it" >&2; exit 1; }
