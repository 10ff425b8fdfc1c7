#!/bin/sh
# Make `prometheus` and `promtool` available for the rule and dashboard tests (make test).
#
# Idempotent: does nothing when both are on PATH. Otherwise installs Debian's `prometheus`
# package (bookworm: 2.42) without recommends, and makes sure no system Prometheus daemon is
# left running or enabled: the tests start their own on a free port. While the package is
# configured, a policy-rc.d that refuses every start stands in for any existing one (Debian's
# invoke-rc.d and deb-systemd-invoke both obey it), and afterwards the service is disabled
# where an init system could start it at boot.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: prometheus/promtool are missing and this is not a Debian-like" \
        "system; install Prometheus >= 2.42 so both are on PATH" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo sh "$0" "$@"
    fi
    echo "ensure-prometheus: installing the prometheus package needs root (or sudo)" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
fi
restore_policy() {
    if [ -n "$saved" ]; then
        mv "$saved" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# ensure-prometheus.sh: no service starts while prometheus is installed\nexit 101\n' >"$policy"
chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends prometheus; then
    apt-get update
    apt-get install -y --no-install-recommends prometheus
fi

# The package enables its service for the next boot; the tests never want it.
if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null
