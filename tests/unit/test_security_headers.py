"""Headers every answer carries: nosniff; dashboard pages also a CSP without
inline script, no framing, a same-origin referrer; 405 names what is allowed."""

from __future__ import annotations

from farm.api import create_app


def test_dashboard_pages_carry_a_policy_and_cannot_be_framed(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"s3_public_endpoint": "https://images.example:9000/"})
    client = create_app(settings).test_client()
    page = client.get("/login")
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in policy
    assert "img-src 'self' data: https://images.example:9000;" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    # The dashboard has no inline script for the policy to break.
    assert "<script>" not in page.get_data(as_text=True)


def test_api_answers_carry_nosniff_and_405_names_the_allowed_methods(sqlite_settings):
    client = create_app(sqlite_settings).test_client()
    answer = client.get("/api/v1/openapi.json")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in answer.headers
    wrong = client.delete("/api/v1/jobs")
    assert wrong.status_code == 405
    assert set(wrong.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert wrong.get_json()["error"]["code"] == "method_not_allowed"


def test_metrics_token_guards_metrics(sqlite_settings):
    open_client = create_app(sqlite_settings).test_client()
    assert open_client.get("/metrics").status_code == 200
    guarded = create_app(sqlite_settings.model_copy(update={"metrics_token": "scrape-me-0123"})).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me-0123"}):
        answer = guarded.get("/metrics", headers=headers)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
        assert "FARM_METRICS_TOKEN" in answer.get_json()["error"]["message"]
    answer = guarded.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123"})
    assert answer.status_code == 200 and "farm_http_request_duration_seconds" in answer.get_data(as_text=True)
