"""Wildcards: the library and its files, seeded expansion, the request check,
the lineage of each image, the API and campaign axes."""

from __future__ import annotations

import collections
import json
import uuid

import pytest

from farm import lineage
from farm.generation.wildcards import (
    MAX_NESTING, Wildcard, WildcardError, WildcardLibrary, expand_wildcards, image_prompts, parse_lines,
    single_image_params, substitute,
)
from farm.settings import Settings
from farm.spec import ModelInfo, RequestError, image_seed, parse_request, resolve_request

MODELS = {"m-sd": ModelInfo("m-sd", "sd", 20, 7.0)}
SETTINGS = Settings(max_images_per_job=8)


@pytest.fixture(scope="module")
def library() -> WildcardLibrary:
    return WildcardLibrary.load()


def write(root, name: str, text: str) -> None:
    path = root / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def user_library(tmp_path, **files: str) -> WildcardLibrary:
    for name, text in files.items():
        write(tmp_path, name.replace("__", "/"), text)
    return WildcardLibrary.load([tmp_path])


# --------------------------------------------------------------------------- files


def test_the_builtin_set_is_ours_and_each_file_has_a_few_dozen_distinct_lines(library):
    assert {"color", "lighting", "camera_angle", "art_medium", "season", "time_of_day", "material", "weather"} <= set(library.names())
    for name in library.names():
        wildcard = library.get(name)
        assert wildcard.source == "builtin"
        assert len(wildcard.lines) >= 15, name
        assert len(set(wildcard.lines)) == len(wildcard.lines), f"{name} repeats a line"
        assert not any(line.startswith("#") or not line for line in wildcard.lines)


def test_comments_and_blank_lines_are_skipped_and_lines_trimmed():
    assert parse_lines("# colours\n\n  red \n#blue\nbright # green\n\t\n") == ("red", "bright # green")


def test_user_files_add_override_and_nest_in_folders(tmp_path, library):
    mine = user_library(tmp_path, color="# only two\nred\nblue\n", people__job="baker\npilot\n")
    assert mine.get("color").lines == ("red", "blue") and mine.get("color").source == str(tmp_path / "color.txt")
    assert mine.get("people/job").lines == ("baker", "pilot")
    assert mine.get("lighting") == library.get("lighting")  # the rest stay built in
    assert expand_wildcards(mine, "a __people/job__", 3).text in ("a baker", "a pilot")


def test_a_missing_user_directory_means_no_user_wildcards(tmp_path, library):
    assert WildcardLibrary.load([tmp_path / "not-yet"]).names() == library.names()


@pytest.mark.parametrize("name,text,problem", [
    ("Bad Name", "x\n", "is not a wildcard name"),
    ("empty", "# nothing here\n\n", "has no options"),
    ("outfit", "a __colr__ coat\n", "names __colr__, which is not a wildcard"),
])
def test_bad_user_files_are_refused_naming_the_file(tmp_path, name, text, problem):
    write(tmp_path, name, text)
    with pytest.raises(WildcardError, match=problem) as info:
        WildcardLibrary.load([tmp_path])
    assert str(tmp_path) in str(info.value)


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(WildcardError, match="not UTF-8"):
        WildcardLibrary.load([tmp_path])


# --------------------------------------------------------------------------- seeded choice


def test_the_same_seed_gives_the_same_text_and_choices(library):
    prompt = "a __color__ house in __season__, __lighting__"
    first = expand_wildcards(library, prompt, 1234)
    assert first == expand_wildcards(library, prompt, 1234)
    assert "__" not in first.text
    assert [c["name"] for c in first.choices if "within" not in c][:1] == ["color"]


def test_choices_spread_over_every_line(library):
    lines = library.get("color").lines
    counts = collections.Counter(expand_wildcards(library, "__color__", seed).text for seed in range(4000))
    assert set(counts) == set(lines)
    expected = 4000 / len(lines)
    assert max(counts.values()) < 2 * expected and min(counts.values()) > expected / 2


def test_two_of_the_same_wildcard_draw_separately(library):
    pairs = [expand_wildcards(library, "__color__ and __color__", seed).choices for seed in range(50)]
    assert sum(a["choice"] != b["choice"] for a, b in pairs) >= 40


def test_a_draw_depends_on_its_place_not_on_the_words_around_it(library):
    for seed in range(20):
        plain = expand_wildcards(library, "__color__ cat", seed).choices
        assert expand_wildcards(library, "a very fluffy __color__ cat", seed).choices == plain


def test_prompt_and_negative_prompt_draw_separately(library):
    same = sum(expand_wildcards(library, "__color__", seed, "prompt").text
               == expand_wildcards(library, "__color__", seed, "negative_prompt").text for seed in range(50))
    assert same < 10


def test_any_case_is_read_as_the_lowercase_name(library):
    assert expand_wildcards(library, "__Color__", 5).text == expand_wildcards(library, "__color__", 5).text


def test_nested_wildcards_expand_and_are_recorded_within_their_parent(tmp_path):
    mine = user_library(tmp_path, outfit="a __color__ coat\na __material__ hat\n")
    seen = set()
    for seed in range(30):
        expansion = expand_wildcards(mine, "portrait, __outfit__", seed)
        assert "__" not in expansion.text
        top, inner = expansion.choices
        assert top["name"] == "outfit" and "within" not in top
        assert inner["within"] == "outfit" and inner["choice"] in expansion.text
        seen.add(inner["name"])
    assert seen == {"color", "material"}


def test_nesting_deeper_than_the_limit_is_refused_when_the_files_load(tmp_path):
    files = {f"level{i}": f"x __level{i + 1}__\n" for i in range(MAX_NESTING)}
    files[f"level{MAX_NESTING}"] = "bottom\n"
    with pytest.raises(WildcardError, match=f"{MAX_NESTING + 1} levels deep"):
        user_library(tmp_path, **files)
    del files[f"level{MAX_NESTING}"]
    files[f"level{MAX_NESTING - 1}"] = "bottom\n"  # exactly the limit: fine
    for path in tmp_path.glob("*.txt"):
        path.unlink()
    deep = user_library(tmp_path, **files)
    assert expand_wildcards(deep, "__level0__", 1).text == "x " * (MAX_NESTING - 1) + "bottom"


def test_wildcards_that_refer_to_each_other_in_a_loop_are_refused(tmp_path):
    with pytest.raises(WildcardError, match="loop: __ping__ → __pong__ → __ping__"):
        user_library(tmp_path, ping="a __pong__\nb\n", pong="__ping__\n")


def test_expansion_itself_stops_at_the_depth_limit():
    # A library built without the load check, looping: the expander still stops.
    looping = WildcardLibrary([Wildcard("echo", ("again __echo__",), "test")])
    with pytest.raises(WildcardError, match=f"deeper than {MAX_NESTING} levels"):
        expand_wildcards(looping, "__echo__", 1)


def test_substitute_replaces_every_occurrence_of_one_name_only():
    assert substitute("__color__ cat, __Color__ dog, __season__", "color", "red") == ("red cat, red dog, __season__", True)
    assert substitute("a cat", "color", "red") == ("a cat", False)


# --------------------------------------------------------------------------- the request check


def resolve(**payload):
    return resolve_request(parse_request(payload), MODELS, SETTINGS)


def test_unknown_wildcards_are_422_naming_the_field_and_close_names():
    with pytest.raises(RequestError) as info:
        resolve(prompt="a __colr__ cat", negative_prompt="__blury__, __weathr__")
    problems = {p.field: p.message for p in info.value.problems}
    assert info.value.status == 422
    assert "unknown wildcard __colr__; did you mean __color__?" in problems["prompt"]
    assert "__weathr__" in str(info.value) and "did you mean __weather__" in str(info.value)
    assert "__blury__" in str(info.value) and "GET /api/v1/wildcards" in str(info.value)


def test_each_image_draws_from_its_own_seed_and_image_zero_is_the_jobs_final_prompt():
    resolved = resolve(prompt="a __color__ cat at __time_of_day__", negative_prompt="__color__", seed=40, num_images=6)
    images = resolved.params["wildcard_images"]
    assert [image["seed"] for image in images] == [image_seed(40, i) for i in range(6)]
    assert resolved.params["final_prompt"] == images[0]["final_prompt"]
    assert resolved.params["prompt"] == "a __color__ cat at __time_of_day__"  # as written
    assert len({image["final_prompt"] for image in images}) > 1
    for image in images:
        alone = resolve(prompt="a __color__ cat at __time_of_day__", negative_prompt="__color__", seed=image["seed"])
        assert alone.params["final_prompt"] == image["final_prompt"]  # a rerender with the image's seed agrees
        assert alone.params["final_negative_prompt"] == image["final_negative_prompt"]
        assert [c["field"] for c in image["wildcards"]] == ["prompt", "prompt", "negative_prompt"]


def test_same_seed_gives_every_image_the_same_draws():
    images = resolve(prompt="__color__", seed=3, num_images=3, same_seed=True).params["wildcard_images"]
    assert len({image["final_prompt"] for image in images}) == 1


def test_styles_and_expansion_apply_to_the_expanded_prompt():
    resolved = resolve(prompt="a __color__ bicycle", seed=8, prompt_expansion=True, num_images=2)
    for image in resolved.params["wildcard_images"]:
        chosen = image["wildcards"][0]["choice"]
        assert image["final_prompt"].startswith(f"a {chosen} bicycle") and len(image["final_prompt"]) > len(f"a {chosen} bicycle")


def test_a_prompt_without_wildcards_resolves_as_before():
    assert "wildcard_images" not in resolve(prompt="a plain cat", seed=1, num_images=2).params


def test_each_images_lineage_holds_its_prompt_as_written_expanded_and_choices():
    params = resolve(prompt="a __color__ cat", seed=11, num_images=3).params
    for index, image in enumerate(params["wildcard_images"]):
        record = lineage.image_params(params, image["seed"], index)
        assert record["final_prompt"] == image["final_prompt"] == f"a {image['wildcards'][0]['choice']} cat"
        assert record["prompt"] == "a __color__ cat"
        assert record["wildcards"] == image["wildcards"]
        assert "wildcard_images" not in record
        assert image_prompts(params, index)[0] == record["final_prompt"]


def test_a1111_infotexts_and_prompts_are_each_images_own():
    from types import SimpleNamespace

    from farm.api.adapters.a1111 import infotext

    params = resolve(prompt="a __color__ cat", seed=11, num_images=3).params
    job = SimpleNamespace(params=params, model_id="m-sd")
    assert len({image["final_prompt"] for image in params["wildcard_images"]}) == 3
    for index, image in enumerate(params["wildcard_images"]):
        assert infotext(job, image["seed"], index).startswith(image["final_prompt"] + "\n")


def test_one_image_of_a_job_narrows_to_its_own_draws():
    params = resolve(prompt="a __color__ cat", seed=11, num_images=3).params
    narrowed = single_image_params(params, 2)
    assert narrowed["final_prompt"] == params["wildcard_images"][2]["final_prompt"]
    assert narrowed["wildcard_images"] == [params["wildcard_images"][2]]
    assert lineage.image_params({**narrowed, "num_images": 1}, 13, 0) == lineage.image_params(params, 13, 2)


# --------------------------------------------------------------------------- API


@pytest.fixture()
def api(sqlite_settings, tmp_path):
    from farm.api import create_app
    from farm.auth import create_user
    from farm.context import build_context
    from farm.events import LocalEvents
    from tests.support.factories import ensure_model

    user_dir = tmp_path / "wildcards"
    write(user_dir, "studio/props", "# our props\numbrella\nteapot\n")
    settings = sqlite_settings.model_copy(update={"wildcards_dir": user_dir})
    ctx = build_context(settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        _, token = create_user(session, "ana", password="ana password 1")
    return create_app(settings, context=ctx).test_client(), {"Authorization": f"Bearer {token}"}


def test_wildcards_are_listed_and_read_by_name(api):
    from tests.support.api import assert_error

    client, headers = api
    listed = client.get("/api/v1/wildcards", headers=headers).get_json()["wildcards"]
    by_name = {row["name"]: row for row in listed}
    assert by_name["studio/props"]["lines"] == 2 and by_name["studio/props"]["source"].endswith("props.txt")
    assert by_name["color"]["source"] == "builtin"
    assert client.get("/api/v1/wildcards/studio/props", headers=headers).get_json() == {
        "name": "studio/props", "source": by_name["studio/props"]["source"], "lines": ["umbrella", "teapot"]}
    assert_error(client.get("/api/v1/wildcards/colr", headers=headers), 404, "did you mean __color__")
    assert client.get("/api/v1/wildcards").status_code == 401
    document = client.get("/api/v1/openapi.json").get_json()
    assert {"/api/v1/wildcards", "/api/v1/wildcards/{name}"} <= set(document["paths"])
    assert "one job per line of each wildcard" in json.dumps(document)  # the campaign matrix's description


def test_a_job_with_an_unknown_wildcard_is_refused_and_a_known_one_is_expanded(api):
    from tests.support.api import assert_error

    client, headers = api
    body = {"width": 64, "height": 64, "steps": 2, "seed": 4}
    response = client.post("/api/v1/jobs", json={**body, "prompt": "an __studio/prop__"}, headers=headers)
    assert_error(response, 422, "did you mean __studio/props__")
    assert response.get_json()["error"]["details"][0]["field"] == "prompt"
    job = client.post("/api/v1/jobs", json={**body, "prompt": "an __studio/props__", "num_images": 2}, headers=headers).get_json()
    params = client.get(job["polling_url"], headers=headers).get_json()["params"]
    assert {image["final_prompt"] for image in params["wildcard_images"]} <= {"an umbrella", "an teapot"}


# --------------------------------------------------------------------------- campaigns


def campaign(**fields):
    from farm.services.campaigns import parse_campaign

    return parse_campaign({"name": "c", "base": {"prompt": "a __color__ vase, __season__"}, **fields})


def test_a_campaign_expands_a_wildcard_into_one_job_per_line(library):
    from farm.services.campaigns import campaign_axes, expand, with_wildcard_axes

    req = with_wildcard_axes(campaign(matrix={"wildcards": ["color"], "steps": [2, 4]}), library)
    colors = library.get("color").lines
    assert req.matrix["__color__"] == list(colors) and "wildcards" not in req.matrix
    jobs = expand(req)
    assert len(jobs) == 2 * len(colors)
    assert [job.request["prompt"] for job in jobs[::2]] == [f"a {color} vase, __season__" for color in colors]
    assert jobs[0].axes == {"__color__": colors[0], "steps": 2}
    assert "__color__" not in jobs[0].request  # an axis, not a request field
    assert [axis.name for axis in campaign_axes(req.matrix, 0)] == ["__color__", "steps"]


def test_own_lines_for_a_wildcard_and_rows_that_hold_it(library):
    from farm.services.campaigns import expand

    req = campaign(matrix={"__material__": ["glass", "clay"]},
                   rows=[{"prompt": "a __material__ cup"}, {"negative_prompt": "__material__"}])
    jobs = expand(req)
    assert [(j.request["prompt"], j.request.get("negative_prompt")) for j in jobs] == [
        ("a glass cup", None), ("a __color__ vase, __season__", "glass"), ("a clay cup", None), ("a __color__ vase, __season__", "clay")]


def test_campaign_wildcard_mistakes_are_422s(library):
    from farm.services.campaigns import expand, with_wildcard_axes

    with pytest.raises(RequestError, match="unknown wildcard __colour__; did you mean __color__"):
        with_wildcard_axes(campaign(matrix={"wildcards": ["colour"]}), library)
    with pytest.raises(RequestError, match="matrix.__weather__: no prompt or negative_prompt"):
        expand(with_wildcard_axes(campaign(matrix={"wildcards": ["weather"]}), library))
    for matrix, text in (({"wildcards": [3]}, "wildcard names"), ({"wildcards": ["color", "color"]}, "twice"),
                         ({"__color__": [""]}, "lines of text"), ({"__Not A Name__": ["x"]}, "not a generation field")):
        with pytest.raises(RequestError, match=text):
            campaign(matrix=matrix)
    with pytest.raises(RequestError, match="also a matrix key"):
        with_wildcard_axes(campaign(matrix={"wildcards": ["color"], "__color__": ["red"]}), library)


def test_wildcard_lines_count_against_the_campaign_job_limit(library, monkeypatch):
    from farm.services import campaigns

    monkeypatch.setattr(campaigns, "MAX_CAMPAIGN_JOBS", len(library.get("color").lines) * 2 - 1)
    req = campaigns.with_wildcard_axes(campaign(matrix={"wildcards": ["color"], "steps": [2, 4]}), library)
    with pytest.raises(RequestError, match="expands to"):
        campaigns.expand(req)


def test_a_campaign_submitted_with_wildcards_queues_one_job_per_line(sqlite_settings):
    from farm.auth import create_user
    from farm.context import build_context
    from farm.events import LocalEvents
    from farm.models import Campaign, Job
    from farm.services.campaigns import submit_campaign
    from sqlalchemy import select
    from tests.support.factories import ensure_model

    ctx = build_context(sqlite_settings, events=LocalEvents())
    with ctx.db.transaction() as session:
        ensure_model(session, "m-sd")
        user, _ = create_user(session, "ana")
    req = campaign(matrix={"wildcards": ["season"]}, base={"prompt": "a park in __season__", "width": 64, "height": 64,
                                                           "steps": 2})
    answer = submit_campaign(ctx, user, req)
    seasons = WildcardLibrary.load().get("season").lines
    with ctx.db.session() as session:
        stored = session.get(Campaign, uuid.UUID(answer["id"]))
        jobs = session.execute(select(Job).where(Job.campaign_id == stored.id).order_by(Job.campaign_index)).scalars().all()
        assert stored.matrix == {"__season__": list(seasons)}
        assert [job.params["final_prompt"] for job in jobs] == [f"a park in {season}" for season in seasons]
        assert json.loads(json.dumps(jobs[0].campaign_axes)) == {"__season__": seasons[0]}


# --------------------------------------------------------------------------- dashboard


def test_the_create_page_lists_wildcards_and_the_image_page_shows_the_choices_with_the_prompt(api):
    import re

    from dashboard.images import lineage_groups

    client, _ = api
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    assert client.post("/login", data={"name": "ana", "password": "ana password 1", "csrf_token": csrf}).status_code == 302
    page = client.get("/create").get_data(as_text=True)
    assert 'id="wildcard-hint"' in page and "<code>__studio/props__</code>" in page and "<code>__color__</code>" in page
    params = resolve(prompt="a __color__ cat", seed=2).params
    groups = dict(lineage_groups({"params": lineage.image_params(params, 2, 0)}))
    prompt_rows = dict(groups["Prompt"])
    assert prompt_rows["wildcards.0.name"] == "color" and prompt_rows["wildcards.0.choice"] in prompt_rows["final_prompt"]
