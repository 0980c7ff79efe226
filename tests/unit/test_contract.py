"""The declared API: the OpenAPI document is valid and covers every route, and
hostile input gets a 4xx naming the field, never a server error (issue 18)."""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from farm.api.contract import DOCUMENTED_PREFIXES, build_document
from tests.support.api import assert_error, auth
from tests.unit.test_api import env as api_env  # noqa: F401  (a fixture)


@pytest.fixture()
def env(api_env):
    ctx, client, tokens = api_env
    return client.application, client, {"alice": auth(tokens["alice"]), "root": auth(tokens["root"])}


def test_the_document_validates_and_declares_every_route(env):
    app, client, _ = env
    document = client.get("/api/v1/openapi.json").get_json()
    validate(document)  # openapi-spec-validator: raises on any defect
    assert document["openapi"] == "3.1.0"
    declared = {(path, method) for path, item in document["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(DOCUMENTED_PREFIXES):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)  # converters (BFL's <bfl_model:model>) drop out
            routed |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert declared == routed and len(routed) > 30
    # Every path parameter is declared; every body and answer has a schema.
    for path, item in document["paths"].items():
        for method, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (method, path)
            for status, response in operation["responses"].items():
                if status not in ("302",):
                    assert response.get("content"), (method, path, status)
    jobs = document["paths"]["/api/v1/jobs"]
    assert jobs["post"]["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerationRequest"}
    assert {p["name"] for p in jobs["get"]["parameters"]} == {"status", "campaign", "cursor", "limit"}
    assert "LoraRequest" in document["components"]["schemas"] and "ImagePromptRequest" in document["components"]["schemas"]
    assert "ReferenceRequest" in document["components"]["schemas"]
    assert "Retry-After" in jobs["post"]["responses"]["429"]["headers"]


def test_an_undeclared_route_stops_the_document(env):
    app, _, _ = env

    @app.get("/api/v1/undeclared")
    def undeclared():
        return {}

    @app.get("/sdapi/v1/undeclared")
    def undeclared_adapter():
        return {}

    with pytest.raises(RuntimeError, match="/api/v1/undeclared.*/sdapi/v1/undeclared"):
        build_document(app, "farm", "0")


@pytest.mark.parametrize("body,field,text", [
    ("[" * 10_000 + "]" * 10_000, "body", "nested too deeply"),
    ({"prompt": "a" + "[" * 40}, None, None),  # deep-looking text is fine
    ({"prompt": "a\u0000b"}, "prompt", "NUL"),
    ('{"prompt": "a\\ud800"}', "prompt", "surrogate"),
    ({"prompt": "x", "seed": 99999999999999999999}, "seed", "out of range"),
    ({"prompt": "x", "steps": 10**12}, "steps", "less than or equal"),
    ('{"prompt": "x", "guidance_scale": NaN}', "body", "finite number"),
    ('{"prompt": "x", "guidance_scale": 1e400}', "guidance_scale", "finite number"),
    ({"prompt": "x", "loras": [{"name": "a\u0000"}]}, "loras.0.name", "NUL"),
    ({"prompt": "x", "styles": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "styles", "nested deeper"),
])
def test_hostile_job_bodies_get_a_4xx_naming_the_field(env, body, field, text):
    _, client, tokens = env
    data = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/api/v1/jobs", data=data, content_type="application/json", headers=tokens["alice"])
    if field is None:
        assert response.status_code == 202, response.get_data(as_text=True)
        return
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    error = assert_error(response, response.status_code, text)
    assert field in error["message"] or field == "body"


def test_hostile_paths_and_queries_get_400_naming_the_parameter(env):
    _, client, tokens = env
    cases = [
        ("delete", "/api/v1/tokens/99999999999999999999", "token_id"),
        ("put", "/api/v1/users/99999999999999999999/quota", "user_id"),
        ("put", "/api/v1/teams/-1/quota", "team_id"),
        ("get", "/api/v1/jobs/%00", "job_id"),
        ("get", "/api/v1/jobs?limit=99999999999999999999", "limit"),
        ("get", "/api/v1/jobs?status=%00", "status"),
        ("get", "/api/v1/jobs?cursor=%00", "cursor"),
        ("get", "/api/v1/usage?since=%00", "since"),
        ("get", "/api/v1/usage?since=2026-13-45", "since"),
        ("get", "/api/v1/usage?group_by=planet", "grouping"),
    ]
    for method, url, name in cases:
        assert_error(getattr(client, method)(url, headers=tokens["root"], json={}), 400, name)


def test_a_cursor_with_a_naive_timestamp_is_refused(env):
    import base64

    _, client, tokens = env
    naive = base64.urlsafe_b64encode(b"2026-11-01T10:00:00|0b7c5a9e-4a1f-4d1e-9a51-3f3c2a1b0c9d").decode().rstrip("=")
    assert_error(client.get(f"/api/v1/jobs?cursor={naive}", headers=tokens["alice"]), 400, "cursor")


@pytest.mark.parametrize("body,field", [
    ({"images_per_day": float("nan")}, "images_per_day"),
    ({"images_per_day": 1.5}, "images_per_day"),
    ({"images_per_day": True}, "images_per_day"),
    ({"images_per_day": 2**40}, "images_per_day"),
    ({"gpu_seconds_per_month": -1}, "gpu_seconds_per_month"),
    ({"max_pixels": "5"}, "max_pixels"),
])
def test_hostile_quotas_are_refused(env, body, field):
    _, client, tokens = env
    data = json.dumps(body)  # Python writes NaN for float("nan"), as a careless client would
    response = client.put("/api/v1/users/1/quota", data=data, content_type="application/json", headers=tokens["root"])
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert field in response.get_json()["error"]["message"] or response.get_json()["error"]["details"][0]["field"] == "body"
    # Nothing was stored: the target's quota is still unlimited, and /me is strict JSON (Python's
    # json.loads would take NaN, so constants are refused explicitly).
    me = json.loads(client.get("/api/v1/me", headers=tokens["alice"]).get_data(as_text=True),
                    parse_constant=lambda name: pytest.fail(f"/me answered {name}"))
    assert me["quota"]["user"] is None


@pytest.mark.parametrize("body,text", [
    ({"name": "eve", "password": 12345}, "password"),
    ({"name": "eve", "team": "t" * 5000}, "team"),
    ({"name": "e\u0000ve"}, "name"),
    ({"name": "eve", "role": "root"}, "role"),
])
def test_user_fields_are_typed(env, body, text):
    _, client, tokens = env
    assert_error(client.post("/api/v1/users", json=body, headers=tokens["root"]), 422, text)


def test_campaign_bodies_are_bounded(env):
    _, client, tokens = env
    huge = client.post("/api/v1/campaigns", json={"name": "c", "base": {"prompt": "x"}, "budget_images": 1e30},
                       headers=tokens["alice"])
    assert huge.status_code == 422 and "budget_images" in huge.get_json()["error"]["message"]
    nul = client.post("/api/v1/campaigns", json={"name": "c", "base": {"prompt": "x\u0000"}}, headers=tokens["alice"])
    assert nul.status_code == 422 and "base.prompt" in nul.get_json()["error"]["message"]
    rows = client.post("/api/v1/campaigns", data={"request": json.dumps({"name": "c", "base": {"prompt": "x"}}),
                                                  "rows": (__import__("io").BytesIO(b'{"prompt": "a\\u0000"}\n'), "r.jsonl")},
                       headers=tokens["alice"])
    assert rows.status_code == 422 and "NUL" in rows.get_json()["error"]["message"]
