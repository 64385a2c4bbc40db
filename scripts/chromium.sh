#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the console's browser test (and for looking at the
# console headless). Idempotent: installs only what is missing; prints the two paths.
#
#   scripts/chromium.sh          install if needed; last lines: the browser, the driver
#
# Installing needs root (apt-get); without it, and without the packages, it fails saying so.
set -euo pipefail

BROWSER=${TALKSTREAM_CHROMIUM:-/usr/bin/chromium}
DRIVER=${TALKSTREAM_CHROMEDRIVER:-/usr/bin/chromedriver}

say() { echo "chromium.sh: $*" >&2; }

if [ ! -x "$BROWSER" ] || [ ! -x "$DRIVER" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "Chromium is not installed and installing needs root: apt-get install -y chromium chromium-driver"
    exit 1
  fi
  say "installing Debian's chromium and chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  # the package lists may be stale or missing on a fresh machine
  if ! apt-get install -y -qq chromium chromium-driver >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq chromium chromium-driver >&2
  fi
fi
if [ ! -x "$BROWSER" ] || [ ! -x "$DRIVER" ]; then
  say "no $BROWSER or $DRIVER after installing"
  exit 1
fi
echo "$BROWSER"
echo "$DRIVER"
