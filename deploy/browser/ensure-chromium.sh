#!/bin/sh
# Make `chromium` and `chromedriver` available for the console's browser tests (make test).
#
# Idempotent: does nothing when both are on PATH. Otherwise installs Debian's `chromium` and
# `chromium-driver` packages without recommends (as root, or with sudo). The tests run the
# browser headless, with a fresh profile, and start nothing at boot.
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium/chromedriver are missing and this is not a Debian-like" \
        "system; install Chromium and its matching chromedriver so both are on PATH" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo sh "$0" "$@"
    fi
    echo "ensure-chromium: installing the chromium packages needs root (or sudo)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium chromium-driver; then
    apt-get update
    apt-get install -y --no-install-recommends chromium chromium-driver
fi

command -v chromium >/dev/null && command -v chromedriver >/dev/null
