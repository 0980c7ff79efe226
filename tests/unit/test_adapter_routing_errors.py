"""A URL under an adapter's prefix that matches no route (404), or a route
asked with the wrong method (405), answers in that interface's error shape,
so its clients can read it; farm's own URLs keep farm's shape."""

from __future__ import annotations

import pytest

from farm.api import create_app


@pytest.fixture()
def client(sqlite_settings):
    return create_app(sqlite_settings).test_client()


@pytest.mark.parametrize("method,path,status,shape", [
    ("GET", "/sdapi/v1/no-such-thing", 404, "a1111"),
    ("DELETE", "/sdapi/v1/txt2img", 405, "a1111"),
    ("GET", "/v1/images/no-such-thing", 404, "openai"),
    ("PUT", "/v1/models", 405, "openai"),
    ("GET", "/v1/generation/no-such-thing", 404, "fastapi"),
    ("GET", "/v1/engines/no-such-thing", 404, "fastapi"),
    ("GET", "/v1/flux/dev/extra", 404, "fastapi"),  # BFL's /v1/<model> takes one segment
    ("GET", "/api/v1/no-such-thing", 404, "farm"),
    ("GET", "/no-such-page", 404, "farm"),
])
def test_routing_errors_come_in_the_interfaces_shape(client, method, path, status, shape):
    response = client.open(path, method=method)
    assert response.status_code == status
    body = response.get_json()
    if shape == "a1111":
        assert body["error"] == "HTTPException" and body["errors"].startswith(f"{status}: ") and body["detail"]
    elif shape == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    elif shape == "fastapi":
        assert set(body) == {"detail"} and body["detail"]
    else:
        assert set(body["error"]) == {"code", "message", "details"}
    if status == 405:
        assert "Allow" in response.headers  # what the route does take, as farm's own 405 says
