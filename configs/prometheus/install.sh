#!/usr/bin/env bash
# Install Prometheus and promtool (the Debian/Ubuntu package `prometheus`) when either is missing.
# Used by `make observe` and by the tests (tests/prometheus_tools.py). Needs apt-get, and root or
# password-less sudo (`sudo -n`); says what to do otherwise.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: prometheus/promtool are not on PATH and there is no apt-get here:" \
        "install Prometheus 2.x (both binaries) by other means." >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "install.sh: installing Prometheus needs root: run" \
        "'sudo apt-get install -y --no-install-recommends prometheus' once, then again." >&2
    exit 1
fi

apt_install() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends prometheus
}
echo "install.sh: installing the Debian package prometheus (apt-get)" >&2
# A fresh machine may have no package lists yet: update and try once more.
apt_install || { "${as_root[@]}" apt-get update && apt_install; }

# On a systemd machine the package starts its own Prometheus service (port 9090, every
# interface, /etc/prometheus/prometheus.yml). Only the binaries were wanted: stop and disable
# the service this installation just started, so `make observe` can have 127.0.0.1:9090.
if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus 2>/dev/null; then
    echo "install.sh: stopping and disabling the prometheus service the package started" >&2
    "${as_root[@]}" systemctl disable --now prometheus || true
fi
command -v prometheus >/dev/null && command -v promtool >/dev/null
