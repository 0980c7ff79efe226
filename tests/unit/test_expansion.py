"""Prompt expansion: the builtin vocabulary engine and the language-model engine.

The language-model tests use the tiny random GPT-2 of write_tiny_causal_lm,
written once per module: random weights produce word salad, but the contracts
(determinism per seed, no repeated words, a prefix that is the prompt) do not
depend on the text being good.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import pytest

from farm.generation.expansion import (
    BuiltinExpander,
    ExpansionError,
    LanguageModelExpander,
    clean_continuation,
    load_vocabulary,
    make_expander,
    write_tiny_causal_lm,
)

PROMPTS = [
    "a portrait of an old fisherman in soft light, golden tones",
    "Oil painting of a lighthouse at dusk; dramatic storm clouds, rough sea",
    "cat",
    "a macro photo of dew on a spider web, shallow depth of field, bokeh",
]


def content_words(text: str) -> list[str]:
    """Words of 3+ letters, lower-cased, punctuation ignored: the rule the expanders follow."""
    return [w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) >= 3]


def added_part(prompt: str, expanded: str) -> str:
    assert expanded.startswith(prompt)
    return expanded[len(prompt):].lstrip(", ")


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_has_eight_categories_of_at_least_25_distinct_phrases():
    vocabulary = load_vocabulary()
    assert len(vocabulary) >= 8
    for name, phrases in vocabulary.items():
        assert len(phrases) >= 25, name
        assert len(set(phrases)) == len(phrases), name
        assert all(1 <= len(p.split()) <= 4 for p in phrases), name


def test_a_malformed_vocabulary_file_is_an_expansion_error(tmp_path):
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps({"categories": {"quality": "not a list"}}))
    with pytest.raises(ExpansionError, match="list of strings"):
        load_vocabulary(path)
    with pytest.raises(ExpansionError, match="cannot read"):
        load_vocabulary(tmp_path / "missing.json")


# --------------------------------------------------------------------------- builtin engine


def test_builtin_same_prompt_and_seed_give_the_same_text():
    for prompt in PROMPTS:
        assert BuiltinExpander().expand(prompt, 42) == BuiltinExpander().expand(prompt, 42)


def test_builtin_different_seeds_and_prompts_give_different_picks():
    expander = BuiltinExpander()
    by_seed = {expander.expand(PROMPTS[0], seed) for seed in range(5)}
    assert len(by_seed) == 5
    # Same seed, different prompts: the prompt hash is part of the seed.
    additions = {added_part(p, expander.expand(p, 7)) for p in ("a red fox", "a blue whale", "a green frog")}
    assert len(additions) == 3


def test_builtin_is_reproducible_across_processes_with_different_hash_seeds():
    # Python salts str hashes per process; a worker must still reproduce the
    # final prompt recorded by another one.
    code = "from farm.generation.expansion import BuiltinExpander; print(BuiltinExpander().expand('a red fox in snow', 1234))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert outputs == {BuiltinExpander().expand("a red fox in snow", 1234) + "\n"}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_builtin_adds_no_prompt_word_and_no_word_twice(prompt):
    expander = BuiltinExpander()
    for seed in range(20):
        added = content_words(added_part(prompt, expander.expand(prompt, seed)))
        assert added, seed
        assert not set(added) & set(content_words(prompt)), seed
        assert len(added) == len(set(added)), seed


def test_builtin_respects_max_words_and_draws_from_several_categories():
    expander = BuiltinExpander()
    for budget in (1, 2, 5, 11, 20, 40):
        added = added_part(PROMPTS[0], expander.expand(PROMPTS[0], 3, max_words=budget))
        assert 0 < len(added.split()) <= budget
    phrases = added_part(PROMPTS[0], expander.expand(PROMPTS[0], 3)).split(", ")
    categories = {name for name, pool in expander.vocabulary.items() for p in phrases if p in pool}
    assert len(categories) >= 4
    assert expander.expand(PROMPTS[0], 3, max_words=0) == PROMPTS[0]


def test_builtin_trims_trailing_separators_of_the_prompt():
    assert BuiltinExpander().expand("  a red fox,  ", 5).startswith("a red fox, ")


@pytest.mark.parametrize(
    ("prompt", "seed", "max_words", "message"),
    [
        ("", 1, 20, "empty"),
        ("   \n", 1, 20, "empty"),
        (None, 1, 20, "string"),
        ("a fox", -1, 20, "seed"),
        ("a fox", "1", 20, "seed"),
        ("a fox", 1, -5, "max_words"),
    ],
)
def test_builtin_refuses_bad_input(prompt, seed, max_words, message):
    with pytest.raises(ExpansionError, match=message):
        BuiltinExpander().expand(prompt, seed, max_words=max_words)


# --------------------------------------------------------------------------- cleaning


def test_clean_continuation_drops_prompt_words_repeats_and_non_words():
    prompt = "Golden hour portrait of a fisherman"
    raw = "golden glow, Portrait 85mm (bokeh:1.2) sun-lit, hour  of warm warm sun, the fisherman's net; http://x.y GLOW"
    assert clean_continuation(prompt, raw) == "glow, bokeh, sun-lit, warm, net"
    assert clean_continuation(prompt, raw, style="tail") == "glow bokeh sun-lit warm net"
    assert clean_continuation(prompt, raw, max_words=2) == "glow, bokeh"
    assert clean_continuation(prompt, "", max_words=5) == ""


# --------------------------------------------------------------------------- language-model engine


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return write_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def lm_expander(tiny_lm):
    return LanguageModelExpander(tiny_lm)


# Built from vocabulary words, so the tiny model knows them and can sample
# them again: the filter has real work to do.
LM_PROMPT = "golden hour portrait, soft light, oil painting of a fisherman with rough stone and warm glow"


def test_tiny_lm_files_load_with_the_auto_classes(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tiny_lm.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert model.config.n_layer == 2 and model.config.n_embd == 32
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    ids = tokenizer("Golden hour, soft light")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "golden hour , soft light"


def test_lm_same_seed_gives_the_same_text_across_instances(tiny_lm, lm_expander):
    first = lm_expander.expand(LM_PROMPT, 11)
    assert lm_expander.expand(LM_PROMPT, 11) == first
    assert LanguageModelExpander(tiny_lm).expand(LM_PROMPT, 11) == first
    assert len({lm_expander.expand(LM_PROMPT, seed) for seed in range(4)}) > 1


def test_lm_appends_only_new_words_to_the_prompt(lm_expander):
    for seed in range(8):
        expanded = lm_expander.expand(LM_PROMPT, seed, max_new_tokens=60)
        added = content_words(added_part(LM_PROMPT, expanded))
        assert added, seed
        assert len(added) <= lm_expander.max_words
        assert not set(added) & set(content_words(LM_PROMPT)), seed
        assert len(added) == len(set(added)), seed


def test_lm_expansion_leaves_the_global_random_stream_alone(lm_expander):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    lm_expander.expand(LM_PROMPT, 5)
    assert torch.equal(torch.rand(3), expected)


def test_lm_concurrent_expansions_match_serial_ones(lm_expander):
    serial = {seed: lm_expander.expand(LM_PROMPT, seed) for seed in range(6)}
    concurrent: dict[int, str] = {}

    def run(seed):
        concurrent[seed] = lm_expander.expand(LM_PROMPT, seed)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert concurrent == serial


def test_lm_prompt_longer_than_the_model_keeps_working(lm_expander):
    prompt = " ".join(["serene"] * 300)
    assert lm_expander.expand(prompt, 1).startswith(prompt)
    with pytest.raises(ExpansionError, match="fewer new tokens"):
        lm_expander.expand("a fox", 1, max_new_tokens=500)


def test_lm_plain_tail_style(tiny_lm):
    expanded = LanguageModelExpander(tiny_lm, style="tail", max_words=6).expand(LM_PROMPT, 2)
    tail = added_part(LM_PROMPT, expanded)
    assert "," not in tail and 0 < len(tail.split()) <= 6


# --------------------------------------------------------------------------- factory


def test_make_expander_builds_each_engine_and_caches_language_models(tiny_lm):
    assert isinstance(make_expander("builtin"), BuiltinExpander)
    expander = make_expander("lm", tiny_lm)
    assert isinstance(expander, LanguageModelExpander)
    assert make_expander("lm", str(tiny_lm)) is expander


def test_make_expander_errors_say_what_to_fix(tmp_path):
    with pytest.raises(ExpansionError, match="unknown prompt-expansion engine 'gpt'.*builtin, lm"):
        make_expander("gpt")
    with pytest.raises(ExpansionError, match="needs model_path"):
        make_expander("lm")
    with pytest.raises(ExpansionError, match="does not exist"):
        make_expander("lm", tmp_path / "missing")
    with pytest.raises(ExpansionError, match="lacks config.json and tokenizer files"):
        make_expander("lm", tmp_path)


def test_a_directory_that_is_not_a_causal_lm_is_an_expansion_error(tiny_lm, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_lm / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ExpansionError, match="as a causal language model"):
        LanguageModelExpander(tmp_path)
