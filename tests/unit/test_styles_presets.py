"""The style library, apply_styles, and presets (farm.generation)."""

from __future__ import annotations

import json
import re

import pytest

from farm.generation.presets import Preset, PresetError, PresetLibrary, apply_preset
from farm.generation.styles import (
    PLACEHOLDER,
    Style,
    StyleError,
    StyleLibrary,
    apply_styles,
    merge_negatives,
    style_listing,
)
from farm.spec import PERFORMANCE_MODES, SAMPLERS, SIGMA_SCHEDULES, parse_request


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load()


@pytest.fixture(scope="module")
def presets(library) -> PresetLibrary:
    return PresetLibrary.load(style_library=library)


def small_library() -> StyleLibrary:
    """Three hand-made styles whose output is easy to spell out."""
    return StyleLibrary([
        Style("oil", "painting", "oil painting of {prompt}, thick brushwork", "photo, blurry", "test"),
        Style("noir", "film", "noir still of {prompt}", "color, Blurry", "test"),
        Style("rim", "lighting", "strong rim light", "flat lighting, PHOTO", "test"),
    ])


def write_json(path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


# --------------------------------------------------------------------------- the built-in library


def test_builtin_library_has_at_least_110_unique_kebab_names(library):
    names = library.names()
    assert len(names) >= 110
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names)
    assert "random" not in names


def test_builtin_file_has_no_repeated_names():
    # The loader keeps the last of two equal names; the file itself must not have any.
    from importlib import resources

    data = json.loads(resources.files("farm.generation").joinpath("data", "styles.json").read_text())
    names = [entry["name"] for entry in data]
    assert len(names) == len(set(names))


def test_builtin_templates_have_at_most_one_placeholder_and_some_have_none(library):
    styles = library.all()
    with_placeholder = [s for s in styles if PLACEHOLDER in s.positive]
    without = [s for s in styles if PLACEHOLDER not in s.positive]
    assert all(s.positive.count(PLACEHOLDER) == 1 for s in with_placeholder)
    assert len(without) >= 5
    for style in styles:
        words = len(style.positive.replace(",", " ").split())
        assert 10 <= words <= 30, (style.name, words)
        assert style.negative, style.name
        assert style.source == "builtin"
        assert "{" not in style.positive.replace(PLACEHOLDER, ""), style.name


def test_builtin_library_spans_the_categories(library):
    expected = {"photography", "film", "painting", "illustration", "anime", "3d", "design", "architecture",
                "fashion", "food", "product", "fantasy", "sci-fi", "craft", "vintage", "lighting", "mood"}
    assert expected <= set(library.categories())


def test_style_listing_rows(library):
    rows = style_listing(library)
    assert len(rows) == len(library)
    assert set(rows[0]) == {"name", "category", "positive", "negative", "has_placeholder", "source"}
    by_name = {row["name"]: row for row in rows}
    assert by_name["light-rim"]["has_placeholder"] is False
    assert by_name["anime-cel-shaded"]["has_placeholder"] is True
    json.dumps(rows)  # JSON-ready


# --------------------------------------------------------------------------- apply_styles


def test_no_styles_leaves_the_prompt_but_tidies_it():
    prompt, negative, resolved = apply_styles(small_library(), "a  fox,, in snow ", " blurry ,", [], seed=1)
    assert (prompt, negative, resolved) == ("a fox, in snow", "blurry", [])


def test_placeholder_style_wraps_the_prompt():
    prompt, negative, resolved = apply_styles(small_library(), "a fox", "", ["oil"], seed=1)
    assert prompt == "oil painting of a fox, thick brushwork"
    assert negative == "photo, blurry"
    assert resolved == ["oil"]


def test_style_without_placeholder_appends_its_words():
    prompt, _, _ = apply_styles(small_library(), "a fox", "", ["rim"], seed=1)
    assert prompt == "a fox, strong rim light"


def test_styles_combine_in_order_and_negatives_are_deduplicated_case_insensitively():
    prompt, negative, resolved = apply_styles(small_library(), "a fox", "BLURRY, text", ["oil", "noir", "rim"], seed=1)
    assert prompt == "noir still of oil painting of a fox, thick brushwork, strong rim light"
    # The request's own negative comes first; later repeats (any case) are dropped.
    assert negative == "BLURRY, text, photo, color, flat lighting"
    assert resolved == ["oil", "noir", "rim"]


def test_order_matters_for_wrapping():
    prompt, _, _ = apply_styles(small_library(), "a fox", "", ["rim", "noir"], seed=1)
    assert prompt == "noir still of a fox, strong rim light"


def test_output_has_no_empty_fragments_or_double_spaces(library):
    for seed in range(20):
        prompt, negative, _ = apply_styles(library, " a  cat , ", ",, dull ,", ["random", "random", "light-rim"], seed)
        for text in (prompt, negative):
            assert ",," not in text and ", ," not in text and "  " not in text
            assert text == text.strip(" ,")
            assert all(part.strip() for part in text.split(","))


def test_braces_in_the_prompt_are_kept_literally():
    prompt, _, _ = apply_styles(small_library(), "a sign saying {prompt} and {x}", "", ["noir"], seed=1)
    assert prompt == "noir still of a sign saying {prompt} and {x}"


def test_a_style_named_twice_is_applied_once():
    prompt, _, resolved = apply_styles(small_library(), "a fox", "", ["noir", "Noir "], seed=1)
    assert prompt == "noir still of a fox"
    assert resolved == ["noir"]


def test_merge_negatives_keeps_first_spelling():
    assert merge_negatives(["Blurry, text", "blurry,  TEXT , watermark", ""]) == "Blurry, text, watermark"


# --------------------------------------------------------------------------- random


def test_random_is_deterministic_per_seed(library):
    for seed in (0, 1, 42, 2**32 - 1):
        first = apply_styles(library, "a fox", "", ["random"], seed)
        second = apply_styles(library, "a fox", "", ["random"], seed)
        assert first == second
        assert first[2][0] in library


def test_random_differs_across_seeds(library):
    picks = {apply_styles(library, "a fox", "", ["random"], seed)[2][0] for seed in range(12)}
    # Twelve draws from 110+ styles landing on at most 3 names would mean the seed is ignored.
    assert len(picks) > 3


def test_random_excludes_styles_already_chosen():
    lib = small_library()
    for seed in range(30):
        # Named styles anywhere in the list are taken, so "rim" is the only pick.
        assert apply_styles(lib, "a fox", "", ["oil", "random", "noir"], seed)[2] == ["oil", "rim", "noir"]
        _, _, resolved = apply_styles(lib, "a fox", "", ["random", "oil", "random"], seed)
        assert sorted(resolved) == ["noir", "oil", "rim"]
        assert resolved[1] == "oil"
    with pytest.raises(StyleError, match="no style left"):
        apply_styles(lib, "a fox", "", ["oil", "random", "random", "noir"], seed=3)


def test_random_records_the_picked_style(library):
    prompt, _, resolved = apply_styles(library, "a fox", "", ["random"], seed=5)
    picked = library.get(resolved[0])
    assert resolved[0] != "random"
    assert prompt == apply_styles(library, "a fox", "", [picked.name], seed=0)[0]


# --------------------------------------------------------------------------- errors


def test_unknown_style_suggests_close_names(library):
    with pytest.raises(StyleError) as raised:
        apply_styles(library, "a fox", "", ["anime-cell-shaded"], seed=1)
    assert "anime-cel-shaded" in str(raised.value)
    assert "anime-cel-shaded" in raised.value.suggestions


def test_unknown_style_without_close_names_points_at_the_listing(library):
    with pytest.raises(StyleError, match="/api/v1/styles"):
        library.get("zzzzqqqq")


# --------------------------------------------------------------------------- user styles


def test_user_directory_overrides_a_builtin_and_adds_a_new_one(tmp_path, library):
    write_json(tmp_path / "mine.json", [
        {"name": "light-rim", "category": "lighting", "positive": "my own rim light", "negative": "mud"},
        {"name": "my-sketchbook", "category": "mine", "positive": "sketchbook page of {prompt}"},
    ])
    loaded = StyleLibrary.load([tmp_path])
    assert len(loaded) == len(library) + 1
    assert loaded.get("light-rim").positive == "my own rim light"
    assert loaded.get("light-rim").source == str(tmp_path / "mine.json")
    assert loaded.get("my-sketchbook").negative == ""
    assert "mine" in loaded.categories()
    prompt, negative, _ = apply_styles(loaded, "a fox", "", ["my-sketchbook", "light-rim"], seed=1)
    assert prompt == "sketchbook page of a fox, my own rim light"
    assert negative == "mud"


def test_later_files_win_and_missing_directories_are_skipped(tmp_path):
    write_json(tmp_path / "a.json", [{"name": "x-one", "category": "c", "positive": "first"}])
    write_json(tmp_path / "b.json", [{"name": "x-one", "category": "c", "positive": "second"}])
    loaded = StyleLibrary.load([tmp_path / "missing", tmp_path])
    assert loaded.get("x-one").positive == "second"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[{", "not valid JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('["just text"]', "must be an object"),
        ('[{"name": "x-y", "category": "c"}]', "missing field positive"),
        ('[{"name": "x-y", "positive": "p {prompt}"}]', "missing field category"),
        ('[{"name": "x-y", "category": "c", "positive": "p", "negtive": "n"}]', "unknown field negtive"),
        ('[{"name": "X Y", "category": "c", "positive": "p"}]', "kebab-case"),
        ('[{"name": "random", "category": "c", "positive": "p"}]', "reserved"),
        ('[{"name": "x-y", "category": "c", "positive": "{prompt} and {prompt}"}]', "more than once"),
        ('[{"name": "x-y", "category": "c", "positive": 3}]', "must be a string"),
        ('[{"name": "x-y", "category": "c", "positive": "p"}, {"name": "x-y", "category": "c", "positive": "q"}]',
         "defined twice"),
    ],
)
def test_malformed_user_file_raises_style_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StyleError) as raised:
        StyleLibrary.load([tmp_path])
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_a_file_given_as_style_directory_is_refused(tmp_path):
    path = tmp_path / "styles.json"
    write_json(path, [])
    with pytest.raises(StyleError, match="not a directory"):
        StyleLibrary.load([path])


# --------------------------------------------------------------------------- presets


def test_builtin_presets_load(presets):
    names = presets.names()
    assert {"realistic", "anime", "illustration", "fast-draft"} <= set(names)
    assert len(names) >= 6
    for preset in presets.all():
        assert preset.description
        assert preset.source == "builtin"
        assert preset.performance in PERFORMANCE_MODES
        assert preset.sampler is None or preset.sampler in SAMPLERS
        assert preset.scheduler is None or preset.scheduler in SIGMA_SCHEDULES
        width, height = (int(side) for side in preset.aspect_ratio.split("*"))
        assert width % 8 == 0 and height % 8 == 0


def test_every_style_named_by_a_builtin_preset_exists(library, presets):
    for preset in presets.all():
        for style in preset.styles:
            assert style in library, (preset.name, style)


def test_builtin_preset_sampler_and_schedule_work_for_their_families(presets):
    pytest.importorskip("diffusers")
    from farm.families import check_sampler
    from farm.workers.pipelines import FAMILIES

    for preset in presets.all():
        if preset.sampler is None or preset.scheduler is None:
            continue
        for family in [preset.model_family] if preset.model_family else FAMILIES:
            assert check_sampler(family, preset.sampler, preset.scheduler) is None, (preset.name, family)


def test_preset_listing_is_json_ready(presets):
    rows = presets.listing()
    assert [row["name"] for row in rows] == presets.names()
    realistic = next(row for row in rows if row["name"] == "realistic")
    assert realistic["model"] == {"family": "sdxl"}
    json.dumps(rows)


def test_apply_preset_fills_unset_fields(presets):
    preset = presets.get("realistic")
    request = {"prompt": "a fox"}
    filled = apply_preset(preset, request)
    assert request == {"prompt": "a fox"}  # the caller's dict is not changed
    assert filled["styles"] == list(preset.styles)
    assert filled["performance"] == preset.performance
    assert filled["guidance_scale"] == preset.guidance_scale
    assert filled["sampler"] == preset.sampler
    assert filled["scheduler"] == preset.scheduler
    assert filled["aspect_ratio"] == preset.aspect_ratio
    assert filled["negative_prompt"] == preset.negative_prompt
    assert "model" not in filled  # a family hint needs a resolver
    parse_request({k: v for k, v in filled.items()})  # still a valid request shape


def test_apply_preset_respects_explicit_fields(presets):
    preset = presets.get("realistic")
    request = {
        "prompt": "a fox",
        "model": "my-model",
        "guidance_scale": 9.0,
        "sampler": "euler",
        "negative_prompt": "",
        "width": 640,
        "height": 512,
        "styles": ["light-rim", "photo-true-to-life", "random"],
    }
    filled = apply_preset(preset, request, model_for_family=lambda family: "never-used")
    assert filled["model"] == "my-model"
    assert filled["guidance_scale"] == 9.0
    assert filled["sampler"] == "euler"
    assert filled["negative_prompt"] == ""
    assert "aspect_ratio" not in filled  # the request gave a size
    assert filled["scheduler"] == preset.scheduler  # not set by the request
    assert filled["styles"] == ["photo-true-to-life", "light-rim", "random"]


def test_apply_preset_resolves_a_family_hint_only_when_asked(presets):
    preset = presets.get("anime")
    assert apply_preset(preset, {"prompt": "x"}, model_for_family={"sdxl": "xl-base"}.get)["model"] == "xl-base"
    assert "model" not in apply_preset(preset, {"prompt": "x"}, model_for_family=lambda family: None)
    assert "model" not in apply_preset(presets.get("illustration"), {"prompt": "x"}, model_for_family=lambda f: "any")


def test_a_different_performance_in_the_request_keeps_the_mode_settings(presets):
    preset = presets.get("realistic")
    filled = apply_preset(preset, {"prompt": "x", "performance": "lightning"})
    assert filled["performance"] == "lightning"
    for key in ("sampler", "scheduler", "guidance_scale"):
        assert key not in filled
    assert filled["aspect_ratio"] == preset.aspect_ratio


def test_unknown_preset_suggests_a_name(presets):
    with pytest.raises(PresetError, match="realistic"):
        presets.get("realistc")


def test_user_preset_overrides_by_name(tmp_path, presets):
    write_json(tmp_path / "mine.json", [
        {"name": "anime", "description": "mine", "styles": ["anime-chibi"], "sampler": "heun"},
        {"name": "my-poster", "styles": ["design-minimal-poster"], "aspect_ratio": "832*1216"},
    ])
    loaded = PresetLibrary.load([tmp_path], style_library=StyleLibrary.load())
    assert len(loaded) == len(presets) + 1
    assert loaded.get("anime").sampler == "heun"
    assert loaded.get("anime").performance is None
    assert apply_preset(loaded.get("my-poster"), {"prompt": "x"}) == {
        "prompt": "x", "styles": ["design-minimal-poster"], "aspect_ratio": "832*1216",
    }


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('[{"description": "no name"}]', "missing field name"),
        ('[{"name": "x", "steps": 5}]', "unknown field steps"),
        ('[{"name": "x", "sampler": "euler_a"}]', "sampler 'euler_a' is not one of"),
        ('[{"name": "x", "scheduler": "linear"}]', "scheduler 'linear'"),
        ('[{"name": "x", "performance": "turbo"}]', "performance 'turbo'"),
        ('[{"name": "x", "guidance_scale": "high"}]', "must be a number"),
        ('[{"name": "x", "guidance_scale": 99}]', "outside"),
        ('[{"name": "x", "aspect_ratio": "16:9"}]', "not like"),
        ('[{"name": "x", "aspect_ratio": "1000*900"}]', "multiples of 8"),
        ('[{"name": "x", "model": "sdxl"}]', "model must be null"),
        ('[{"name": "x", "model": {"family": "dalle"}}]', "not one of"),
        ('[{"name": "x", "styles": "photo-true-to-life"}]', "list of style names"),
    ],
)
def test_invalid_preset_file_raises_preset_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PresetError) as raised:
        PresetLibrary.load([tmp_path])
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_preset_naming_an_unknown_style_is_refused_with_a_style_library(tmp_path, library):
    write_json(tmp_path / "typo.json", [{"name": "x", "styles": ["anime-cell-shaded"]}])
    assert "x" in PresetLibrary.load([tmp_path])  # without a library there is nothing to check against
    with pytest.raises(PresetError, match="anime-cel-shaded") as raised:
        PresetLibrary.load([tmp_path], style_library=library)
    assert str(tmp_path / "typo.json") in str(raised.value)


def test_preset_dataclass_defaults_leave_everything_to_the_request():
    preset = Preset(name="empty")
    request = {"prompt": "x", "sampler": "heun"}
    assert apply_preset(preset, request) == request
