"""The api during a database outage: 503 with Retry-After, never a 500."""

from __future__ import annotations

from farm.api import create_app
from farm.localcluster import free_port
from farm.settings import Settings


def test_a_database_that_refuses_connections_gives_503_with_retry_after(tmp_path):
    # Nothing listens on this port: every connection attempt is refused, as
    # during a PostgreSQL restart.
    settings = Settings(home=tmp_path / "home", database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/farm")
    client = create_app(settings).test_client()
    for method, path, body in (("get", "/api/v1/me", None), ("post", "/api/v1/jobs", {"prompt": "a fox"}),
                               ("get", "/api/v1/jobs", None)):
        response = getattr(client, method)(path, json=body, headers={"Authorization": "Bearer farm_x"})
        assert response.status_code == 503, (path, response.get_data(as_text=True))
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "unavailable"
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["database"] == "down"
