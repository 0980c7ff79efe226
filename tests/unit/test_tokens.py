"""API tokens on the embedded database: create, list, revoke, scopes, last use; through the API and the CLI."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import event, select

from farm.api import create_app
from farm.auth import create_user, hash_token
from farm.context import build_context
from farm.events import LocalEvents
from farm.models import ApiToken, User
from farm.services import tokens as token_service
from tests.support.api import assert_error, auth
from tests.support.factories import ensure_model

VIEW_KEYS = {"id", "name", "prefix", "scope", "created_at", "last_used_at", "revoked_at"}


@pytest.fixture()
def env(sqlite_settings):
    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        alice, alice_token = create_user(session, "alice")
        bob, bob_token = create_user(session, "bob")
        root, root_token = create_user(session, "root", admin=True)
    app = create_app(sqlite_settings, context=ctx)
    ids = {"alice": alice.id, "bob": bob.id, "root": root.id}
    return ctx, app.test_client(), {"alice": alice_token, "bob": bob_token, "root": root_token}, ids


def submit(client, token):
    return client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}, headers=auth(token))


def test_a_member_creates_lists_and_revokes_their_own_tokens(env):
    ctx, client, tokens, _ = env
    created = client.post("/api/v1/tokens", json={"name": "laptop"}, headers=auth(tokens["alice"]))
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    assert set(body) == {"id", "name", "prefix", "scope", "token"}
    assert body["name"] == "laptop" and body["scope"] == "full" and body["token"].startswith(body["prefix"])
    new_token = body["token"]
    assert client.get("/api/v1/me", headers=auth(new_token)).get_json()["user"]["name"] == "alice"

    listed = client.get("/api/v1/tokens", headers=auth(tokens["alice"])).get_json()["tokens"]
    assert [t["name"] for t in listed] == ["default", "laptop"]
    assert all(set(t) == VIEW_KEYS for t in listed)
    assert all(t["revoked_at"] is None for t in listed)

    revoked = client.delete(f"/api/v1/tokens/{body['id']}", headers=auth(tokens["alice"]))
    assert revoked.status_code == 200
    assert set(revoked.get_json()) == VIEW_KEYS and revoked.get_json()["revoked_at"]
    assert_error(client.get("/api/v1/me", headers=auth(new_token)), 401, "invalid or revoked")
    assert_error(client.delete(f"/api/v1/tokens/{body['id']}", headers=auth(tokens["alice"])), 409, "already revoked")
    assert_error(client.delete("/api/v1/tokens/9999", headers=auth(tokens["alice"])), 404, "no token")
    assert_error(client.delete("/api/v1/tokens/abc", headers=auth(tokens["alice"])), 400, "token_id: must be an integer")
    assert_error(client.delete("/api/v1/tokens/99999999999999999999", headers=auth(tokens["alice"])), 400, "token_id")
    # The token used for these calls is still good.
    assert client.get("/api/v1/me", headers=auth(tokens["alice"])).status_code == 200


def test_listing_never_shows_a_token_or_its_hash(env):
    ctx, client, tokens, ids = env
    plain = client.post("/api/v1/tokens", json={"name": "ci"}, headers=auth(tokens["alice"])).get_json()["token"]
    for token in (tokens["alice"], tokens["root"]):
        text = client.get("/api/v1/tokens", query_string={"user": ids["alice"]}, headers=auth(token)).get_data(as_text=True)
        for secret in (plain, hash_token(plain), tokens["alice"], hash_token(tokens["alice"])):
            assert secret not in text
    with ctx.db.session() as session:
        assert session.execute(select(ApiToken.id).where(ApiToken.token_hash == hash_token(plain))).scalar_one()


def test_admins_manage_anyones_tokens(env):
    _, client, tokens, ids = env
    created = client.post("/api/v1/tokens", json={"user": ids["bob"], "name": "render-box", "scope": "read"}, headers=auth(tokens["root"]))
    assert created.status_code == 201 and created.get_json()["scope"] == "read"
    bob_read = created.get_json()["token"]
    assert client.get("/api/v1/me", headers=auth(bob_read)).get_json()["user"]["name"] == "bob"

    # The admin's own listing is the admin's tokens; ?user= picks another user's.
    assert [t["name"] for t in client.get("/api/v1/tokens", headers=auth(tokens["root"])).get_json()["tokens"]] == ["default"]
    bobs = client.get("/api/v1/tokens", query_string={"user": ids["bob"]}, headers=auth(tokens["root"])).get_json()["tokens"]
    assert [t["name"] for t in bobs] == ["default", "render-box"]
    assert client.get("/api/v1/tokens", query_string={"user": ids["bob"]}, headers=auth(tokens["bob"])).status_code == 200

    revoked = client.delete(f"/api/v1/tokens/{created.get_json()['id']}", headers=auth(tokens["root"]))
    assert revoked.status_code == 200 and revoked.get_json()["name"] == "render-box"
    assert_error(client.get("/api/v1/me", headers=auth(bob_read)), 401, "invalid or revoked")
    assert_error(client.get("/api/v1/tokens", query_string={"user": 9999}, headers=auth(tokens["root"])), 404, "no user")
    assert_error(client.post("/api/v1/tokens", json={"user": 9999}, headers=auth(tokens["root"])), 404, "no user")
    assert_error(client.get("/api/v1/tokens", query_string={"user": "bob"}, headers=auth(tokens["root"])), 400, "user: must be an integer")


def test_members_cannot_see_or_touch_other_users_tokens(env):
    _, client, tokens, ids = env
    root_tokens = client.get("/api/v1/tokens", headers=auth(tokens["root"])).get_json()["tokens"]
    assert_error(client.get("/api/v1/tokens", query_string={"user": ids["root"]}, headers=auth(tokens["alice"])), 404, "no user")
    # Another user's token answers exactly like a missing one.
    other = assert_error(client.delete(f"/api/v1/tokens/{root_tokens[0]['id']}", headers=auth(tokens["alice"])), 404, "no token")
    missing = assert_error(client.delete("/api/v1/tokens/9999", headers=auth(tokens["alice"])), 404, "no token")
    assert other["message"].replace(str(root_tokens[0]["id"]), "N") == missing["message"].replace("9999", "N")
    assert_error(client.post("/api/v1/tokens", json={"user": ids["bob"]}, headers=auth(tokens["alice"])), 404, "no user")
    assert client.get("/api/v1/me", headers=auth(tokens["root"])).status_code == 200


def test_a_read_only_token_reads_but_never_writes(env):
    _, client, tokens, _ = env
    read = client.post("/api/v1/tokens", json={"name": "dashboard", "scope": "read"}, headers=auth(tokens["alice"])).get_json()
    assert read["scope"] == "read"
    headers = auth(read["token"])
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    assert client.get("/api/v1/tokens", headers=headers).status_code == 200
    assert_error(submit(client, read["token"]), 403, "read-only")
    assert_error(client.post("/api/v1/tokens", json={"name": "escalate"}, headers=headers), 403, "read-only")
    assert_error(client.delete(f"/api/v1/tokens/{read['id']}", headers=headers), 403, "read-only")


def test_the_service_refuses_token_creation_from_a_read_only_token(env):
    ctx, _, _, ids = env
    with ctx.db.session() as session:
        alice = session.get(User, ids["alice"])
    with pytest.raises(token_service.ForbiddenError, match="read-only"):
        token_service.create_token(ctx, alice, actor_scope="read")


@pytest.mark.parametrize("body,field,text", [
    ({"name": ""}, "name", "must not be empty"),
    ({"name": "x" * 65}, "name", "at most 64 characters"),
    ({"name": "   "}, "name", "blank"),
    ({"name": 5}, "name", "valid string"),
    ({"scope": "admin"}, "scope", "'full' or 'read'"),
    ({"scope": None}, "scope", "'full' or 'read'"),
    ({"user": "bob"}, "user", "must be an integer"),
    ({"user": True}, "user", "must be an integer"),
    ({"user": 10**20}, "user", "out of range"),
    ({"expires": "never"}, "expires", "unknown field"),
])
def test_bad_token_requests_get_422(env, body, field, text):
    _, client, tokens, _ = env
    error = assert_error(client.post("/api/v1/tokens", json=body, headers=auth(tokens["alice"])), 422, text)
    assert error["code"] == "validation_error" and [d["field"] for d in error["details"]] == [field]


def test_bad_token_bodies(env):
    _, client, tokens, _ = env
    both = assert_error(client.post("/api/v1/tokens", json={"name": "", "scope": "x"}, headers=auth(tokens["alice"])), 422, "name")
    assert [d["field"] for d in both["details"]] == ["name", "scope"]
    assert_error(client.post("/api/v1/tokens", json=["laptop"], headers=auth(tokens["alice"])), 422, "JSON object")
    assert_error(client.post("/api/v1/tokens", data="name=x", headers=auth(tokens["alice"])), 415, "JSON body")


def test_last_used_at_is_written_at_most_once_a_minute(env):
    ctx, client, tokens, ids = env

    def last_used():
        with ctx.db.session() as session:
            return session.execute(select(ApiToken.last_used_at).where(ApiToken.token_hash == hash_token(tokens["bob"]))).scalar_one()

    assert last_used() is None
    assert client.get("/api/v1/me", headers=auth(tokens["bob"])).status_code == 200
    first = last_used()
    assert first is not None and first.tzinfo is not None
    listed = client.get("/api/v1/tokens", headers=auth(tokens["bob"])).get_json()["tokens"]
    assert listed[0]["last_used_at"] == first.isoformat()

    statements = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", record)
    try:
        assert client.get("/api/v1/me", headers=auth(tokens["bob"])).status_code == 200
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", record)
    assert last_used() == first
    # Authentication was one SELECT; nothing was written.
    assert [s.split()[0] for s in statements if "api_tokens" in s] == ["SELECT"], statements
    assert not [s for s in statements if s.split()[0] in ("UPDATE", "INSERT", "DELETE")], statements

    # A minute later the next request records it again.
    with ctx.db.transaction() as session:
        row = session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(tokens["bob"]))).scalar_one()
        row.last_used_at = first - dt.timedelta(minutes=2)
    assert client.get("/api/v1/me", headers=auth(tokens["bob"])).status_code == 200
    assert last_used() > first


def test_openapi_documents_the_token_operations(env):
    _, client, _, _ = env
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert set(paths["/api/v1/tokens"]) == {"get", "post"} and "delete" in paths["/api/v1/tokens/{token_id}"]


# ---------------------------------------------------------------------- CLI


def test_cli_creates_lists_and_revokes_tokens(run, sqlite_settings):
    assert run("users", "create", "ana").exit_code == 0
    created = run("tokens", "create", "ana", "--name", "laptop", "--read-only")
    assert created.exit_code == 0, created.output
    plain = created.output.strip().splitlines()[-1]
    assert plain.startswith("farm_") and "read token" in created.output

    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.session() as session:
        row = session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(plain))).scalar_one()
        assert (row.name, row.scope, row.user.name) == ("laptop", "read", "ana")
        user_id = row.user_id

    by_id = run("tokens", "create", str(user_id))
    assert by_id.exit_code == 0 and "full token" in by_id.output

    listing = run("tokens", "list", "ana")
    assert listing.exit_code == 0
    lines = listing.output.strip().splitlines()
    assert len(lines) == 3 and all("\tana\t" in line and "active" in line for line in lines)
    assert plain not in listing.output and hash_token(plain) not in listing.output
    assert any("laptop" in line and "\tread\t" in line for line in lines)

    revoked = run("tokens", "revoke", str(row.id))
    assert revoked.exit_code == 0 and f"revoked token {row.id} (laptop) of ana" in revoked.output
    assert "revoked 20" in [line for line in run("tokens", "list").output.splitlines() if "laptop" in line][0]


def test_cli_token_errors_are_one_line(run):
    assert run("users", "create", "ana").exit_code == 0
    cases = [
        (("tokens", "create", "nobody"), "no user named 'nobody'"),
        (("tokens", "create", "ana", "--name", ""), "name: must be a string of 1 to 64 characters"),
        (("tokens", "create", "ana", "--name", "x" * 65), "1 to 64 characters"),
        (("tokens", "list", "nobody"), "no user named 'nobody'"),
        (("tokens", "revoke", "9999"), "no token 9999"),
        (("tokens", "revoke", "abc"), "no token 'abc'"),
    ]
    for args, text in cases:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert text in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    first_id = run("tokens", "list", "ana").output.split("\t", 1)[0]
    assert run("tokens", "revoke", first_id).exit_code == 0
    again = run("tokens", "revoke", first_id)
    assert again.exit_code == 1 and "already revoked" in again.output
    assert run("tokens", "list").exit_code == 0
