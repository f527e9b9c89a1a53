"""Bad input at scale against the real server (issue 25): schemathesis generates requests for
every route of GET /v2/openapi.json, through HAProxy to the replicas and the monitor, with a token
of every scope. No answer may be a 5xx, each must have a status and a body its route declares,
and no replica may restart.

`make test` runs a small count (VIGIL_FUZZ_MAX_EXAMPLES, default 5: about 800 requests);
`make fuzz` runs it with 30 per operation and mode (over 1,000). Alias changes are generated for
models that do not exist (load_tests/fuzz_hooks.py): the session's models keep their aliases.
"""

from __future__ import annotations

import os

import httpx
import pytest

from load_tests import fuzz_api
from tests.integration.conftest import VigilCluster, create_token, wait_for

# Examples per operation and mode; several comma-separated run one after the other.
COUNTS = [int(n) for n in os.environ.get("VIGIL_FUZZ_MAX_EXAMPLES", "5").split(",")]


def _replicas(vigil: VigilCluster) -> set[str]:
    """Every live replica actor of both applications (a restarted one has a new id)."""
    from ray.util.state import list_actors

    actors = list_actors(address=vigil.dashboard_url, filters=[("state", "=", "ALIVE")],
                         limit=10_000)
    return {f"{a.class_name} {a.actor_id}" for a in actors
            if a.class_name.startswith("ServeReplica:")}


@pytest.mark.parametrize("max_examples", COUNTS)
def test_generated_requests_get_no_server_error_and_conform_to_the_document(
        vigil: VigilCluster, tmp_path, max_examples: int) -> None:
    token = create_token(f"fuzz-{max_examples}", "infer,feedback,monitor,admin",
                         vigil.models_dir)
    wait_for(lambda: httpx.get(f"{vigil.base_url}/v2/vigil/batching", timeout=5, headers={
        "Authorization": f"Bearer {token}"}).status_code == 200, 30, "the new token accepted")
    document = httpx.get(f"{vigil.base_url}/v2/openapi.json", timeout=10)  # no token: open
    assert document.status_code == 200
    assert "/monitor/v1/models/{model}/drift" in document.json()["paths"]
    before = _replicas(vigil)
    assert any("ModelServer" in r for r in before) and any("Monitor" in r for r in before)

    result = fuzz_api.run(vigil.base_url, token, max_examples=max_examples, seed=25,
                          models=["breast_cancer", "mlp"], report_dir=tmp_path)
    print(fuzz_api.table(result))

    failures = "\n".join(result.failures[:80])
    assert result.server_errors == 0, f"{result.statuses}\n{failures}"
    assert result.exit_code == 0, failures or (tmp_path / "schemathesis.txt").read_text()[-4000:]
    assert result.requests >= (1000 if max_examples >= 30 else 300), result.statuses
    assert _replicas(vigil) == before  # no replica restarted, of either application
    assert vigil.serving()
