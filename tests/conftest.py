"""Test-wide setup: the Ray environment every test process needs, set before Ray is imported;
the Prometheus binaries for the tests that need them."""

import base64
import os
import secrets

import pytest

from load_tests.procs import free_port
from vigil.tools.haproxy_header_timeout import ray_environment


# A single Ray node on 127.0.0.1, with the same ingress path as `make serve` (HAProxy in front of
# replicas that serve HTTP themselves). Ports differ from the defaults so a developer's running
# `make serve` and the tests do not collide.
_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",  # as the Makefile ships it
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "10",  # as the Makefile ships it
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": "65536",  # as the Makefile ships it
    "RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE": "65536",  # as the Makefile ships it
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "32000",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "32999",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "42000",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "42999",
    "RAY_DEDUP_LOGS": "0",
    # Replicas behind HAProxy drain 30 s by default before stopping; nothing needs that here.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",  # as the Makefile ships it
    # The webhook signing secret, in the environment Ray's workers inherit (as a user exports
    # it before `make serve`); tests/integration/test_alerts.py names it in its targets.
    "VIGIL_TEST_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
}
# HAProxy's header timeout as `make serve` gets it (vigil-haproxy in front of Ray's bundled
# HAProxy), 3 s rather than 10 so tests/integration/test_front_door.py sees slowloris cut in seconds.
_ENV.update(ray_environment(3))
for _key, _value in _ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def prometheus_tools():
    """prometheus and promtool, the Debian package installed first when either is missing
    (tests/prometheus_tools.py); fails, saying what to do, when that cannot be done."""
    from tests.prometheus_tools import ensure_prometheus

    try:
        return ensure_prometheus()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
