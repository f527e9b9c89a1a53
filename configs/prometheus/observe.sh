#!/usr/bin/env bash
# `make observe`: Prometheus on http://127.0.0.1:9090 scraping `make serve` (Ray's metrics
# endpoints from Ray's service-discovery file, and the monitor's /monitor/metrics), with
# configs/prometheus/prometheus.yml and its rules. Data lives in .observe/ (git-ignored) and
# survives restarts. Ctrl-C stops it.
#
# Prometheus's bearer token for the monitor is .observe/prometheus.token: when a tokens file
# is in use (VIGIL_TOKENS_FILE, else tokens.yaml beside models/), a token named `prometheus`
# with the `metrics` scope is created once (`vigil tokens create prometheus --scopes metrics`);
# without a tokens file the file stays empty (Vigil answers its own host without tokens).
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE=.observe
TOKEN_FILE=$STATE/prometheus.token
TOKENS_FILE=${VIGIL_TOKENS_FILE:-tokens.yaml}
LISTEN=${PROMETHEUS_LISTEN:-127.0.0.1:9090}
VIGIL=${VIGIL:-.venv/bin/vigil}

bash configs/prometheus/install.sh

mkdir -p "$STATE/data"
chmod 700 "$STATE"
if [ -f "$TOKENS_FILE" ]; then
    if [ ! -s "$TOKEN_FILE" ]; then
        echo "observe: creating a metrics-scope token for Prometheus in $TOKENS_FILE"
        if ! out=$("$VIGIL" tokens create prometheus --scopes metrics --file "$TOKENS_FILE" 2>&1); then
            echo "$out" >&2
            echo "observe: a token named 'prometheus' exists but $TOKEN_FILE is empty: either" \
                "write that token into $TOKEN_FILE, or run '$VIGIL tokens revoke prometheus'" \
                "and 'make observe' again." >&2
            exit 1
        fi
        (umask 077 && printf '%s\n' "$(printf '%s\n' "$out" | tail -n 1)" > "$TOKEN_FILE")
    fi
else
    [ -e "$TOKEN_FILE" ] || (umask 077 && : > "$TOKEN_FILE")
fi

echo "observe: Prometheus on http://$LISTEN (targets: /targets, alerts: /alerts); Ctrl-C stops it"
exec prometheus \
    --config.file=configs/prometheus/prometheus.yml \
    --web.listen-address="$LISTEN" \
    --storage.tsdb.path="$STATE/data" \
    --storage.tsdb.retention.time=7d
