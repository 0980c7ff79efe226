"""Prompt expansion: enrich a short prompt with quality and detail words.

Two engines behind one contract, ``expand(prompt, seed) -> str``:

* :class:`BuiltinExpander` draws phrases from the project's own curated
  vocabulary (``data/expansion_vocabulary.json``) with :class:`random.Random`.
  No model, no torch work, microseconds per call.
* :class:`LanguageModelExpander` lets any causal language model saved with
  ``save_pretrained`` continue the prompt, then cleans the continuation.

Contracts both engines keep:

* deterministic: the same prompt and seed give the same text, so a job's
  ``final_prompt`` can be reproduced from its lineage record;
* the expanded prompt starts with the prompt (trailing whitespace and
  separators trimmed) and only appends to it;
* no word of three or more letters that is already in the prompt is added
  again, and nothing added is repeated (case-insensitive, punctuation ignored);
* every failure is an :class:`ExpansionError` whose message says what to fix.

:func:`write_tiny_causal_lm` writes a tiny random-weight GPT-2 and a word-level
tokenizer that load offline; it exists for tests and the offline demo, the
same idea as diffusers' ``get_dummy_components()``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import random
import re
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_WORDS",
    "ENGINES",
    "BuiltinExpander",
    "Expander",
    "ExpansionError",
    "LanguageModelExpander",
    "clean_continuation",
    "load_vocabulary",
    "make_expander",
    "write_tiny_causal_lm",
]

DEFAULT_MAX_WORDS = 20
ENGINES = ("builtin", "lm")

# Words of fewer letters are mostly articles and prepositions ("a", "of",
# "in"); they carry no content, so they neither block a phrase nor count as a
# repeat.
MIN_WORD_LETTERS = 3

# Runs of letters in any script; digits and "_" are what \w adds to letters.
_LETTERS = re.compile(r"[^\W\d_]+")
# A word the language-model cleaner keeps: letters, optionally joined by
# single hyphens ("award-winning"), nothing else.
_LM_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
# Language models separate ideas with punctuation; each piece between these
# becomes one phrase of the cleaned continuation.
_PHRASE_BREAK = re.compile(r"[,.;:!?|\n\r\t]+")
# Links would otherwise survive as words ("http", "www") once split on ":" and ".".
_URL = re.compile(r"\S*://\S*|\bwww\.\S+", re.IGNORECASE)
# Punctuation that wraps words in model output ("(bokeh)", "*sharp*").
_WRAPPING = "\"'()[]{}<>*_~`«»“”‘’"
# Function words of three or more letters. After de-duplication they would
# stand alone in the tail ("with", "the") and add nothing an encoder can use.
_FUNCTION_WORDS = frozenset(
    "the and with for from into onto that this these those its are was were has have had very "
    "but not you your our their there then than which who whom what when where while".split()
)

_VOCABULARY_RESOURCE = "data/expansion_vocabulary.json"


class ExpansionError(Exception):
    """Prompt expansion cannot run; the message says what to fix."""


class Expander(Protocol):
    """What the render path needs from an expansion engine."""

    def expand(self, prompt: str, seed: int) -> str: ...


# --------------------------------------------------------------------------- helpers


def _content_words(text: str) -> set[str]:
    """Lower-cased words of ``MIN_WORD_LETTERS`` or more letters; punctuation and digits split words."""
    return {word for word in _LETTERS.findall(text.lower()) if len(word) >= MIN_WORD_LETTERS}


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ExpansionError(f"the prompt must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ExpansionError("the prompt is empty; expansion needs some text to add to")
    return prompt


def _check_seed(seed: Any) -> int:
    # bool is an int subclass; True as a seed is almost certainly a bug upstream.
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ExpansionError(f"the seed must be an integer, not {type(seed).__name__}")
    # torch.manual_seed takes at most 64 bits; the builtin engine follows the
    # same range so a seed valid for one engine is valid for the other.
    if not 0 <= seed < 2**64:
        raise ExpansionError(f"the seed must be between 0 and 2**64 - 1, got {seed}")
    return seed


def _check_budget(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExpansionError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _append(prompt: str, addition: str) -> str:
    # Trailing separators are trimmed so "a cat," does not become "a cat,, ...".
    base = prompt.strip().rstrip(",;").rstrip()
    return f"{base}, {addition}" if addition else base


# --------------------------------------------------------------------------- vocabulary


def load_vocabulary(path: str | os.PathLike[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Read an expansion vocabulary: ``{"categories": {name: [phrase, ...]}}``.

    Without ``path`` the vocabulary shipped with farm is read (cached after the
    first call). Phrases are stripped; empty ones and exact repeats within a
    category are dropped.
    """
    if path is None:
        return dict(_shipped_vocabulary())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpansionError(f"cannot read the expansion vocabulary {os.fspath(path)!r}: {exc}") from exc
    return _parse_vocabulary(text, os.fspath(path))


@lru_cache(maxsize=1)
def _shipped_vocabulary() -> dict[str, tuple[str, ...]]:
    # importlib.resources rather than __file__ so the file is found in a wheel
    # or zip install as well as in a checkout.
    resource = importlib.resources.files("farm.generation").joinpath(_VOCABULARY_RESOURCE)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExpansionError(
            f"the expansion vocabulary farm/generation/{_VOCABULARY_RESOURCE} is missing ({exc}); "
            "reinstall farm, or make sure package data includes farm/generation/data/*.json"
        ) from exc
    return _parse_vocabulary(text, f"farm/generation/{_VOCABULARY_RESOURCE}")


def _parse_vocabulary(text: str, where: str) -> dict[str, tuple[str, ...]]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ExpansionError(f"the expansion vocabulary {where} is not valid JSON: {exc}") from exc
    categories = document.get("categories") if isinstance(document, dict) else None
    if not isinstance(categories, dict) or not categories:
        raise ExpansionError(f"the expansion vocabulary {where} needs a non-empty \"categories\" object of name -> list of phrases")
    vocabulary: dict[str, tuple[str, ...]] = {}
    for name, phrases in categories.items():
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise ExpansionError(f"category {name!r} of the expansion vocabulary {where} must be a list of strings")
        cleaned = tuple(dict.fromkeys(p.strip() for p in phrases if p.strip()))
        if not cleaned:
            raise ExpansionError(f"category {name!r} of the expansion vocabulary {where} has no phrases")
        vocabulary[name] = cleaned
    return vocabulary


# --------------------------------------------------------------------------- builtin engine


class BuiltinExpander:
    """Append phrases from a curated vocabulary, several categories per prompt.

    The generator is seeded with the seed *and* a stable hash of the prompt:
    with the seed alone, every prompt of a campaign that shares a seed would
    get the same additions. ``hash()`` is not usable for this because Python
    salts it per process (PYTHONHASHSEED), which would break reproducibility
    across workers.

    Stateless after construction, so one instance can serve many threads.
    """

    def __init__(self, vocabulary: Mapping[str, Sequence[str]] | None = None) -> None:
        source = load_vocabulary() if vocabulary is None else vocabulary
        if not source:
            raise ExpansionError("the expansion vocabulary has no categories")
        # Sorted so that the order of the JSON file (or of a caller's dict) does
        # not leak into which phrases a seed picks.
        self.vocabulary: dict[str, tuple[str, ...]] = {name: tuple(source[name]) for name in sorted(source)}

    def expand(self, prompt: str, seed: int, max_words: int = DEFAULT_MAX_WORDS) -> str:
        """Return ``prompt`` followed by comma-separated phrases adding at most ``max_words`` words."""
        _check_prompt(prompt)
        _check_seed(seed)
        _check_budget("max_words", max_words)
        phrases = self._pick(prompt, seed, max_words)
        logger.debug("builtin expansion seed=%d added %d phrases", seed, len(phrases))
        return _append(prompt, ", ".join(phrases))

    def _pick(self, prompt: str, seed: int, max_words: int) -> list[str]:
        digest = hashlib.sha256(prompt.strip().encode("utf-8")).digest()
        # Seed in the high bits, prompt hash in the low 64: distinct (prompt,
        # seed) pairs get distinct generator states, with no collisions between
        # e.g. seed 1 of one prompt and seed 2 of another.
        rng = random.Random((seed << 64) | int.from_bytes(digest[:8], "big"))

        categories = list(self.vocabulary)
        rng.shuffle(categories)
        # Each category's phrases in a per-call random order; popping from the
        # end walks that order.
        pools = {name: rng.sample(self.vocabulary[name], len(self.vocabulary[name])) for name in categories}

        used = _content_words(prompt)
        chosen: list[str] = []
        budget = max_words
        # Round robin over the categories, one phrase from each per round, so
        # the additions spread over lighting, color, camera... rather than
        # piling up in the first category drawn.
        while budget > 0:
            progressed = False
            for name in categories:
                if budget == 0:
                    break
                pool = pools[name]
                while pool:
                    phrase = pool.pop()
                    size = len(phrase.split())
                    words = _content_words(phrase)
                    # A phrase too long now stays too long: the budget only shrinks.
                    if size > budget or words & used or phrase in chosen:
                        continue
                    chosen.append(phrase)
                    used |= words
                    budget -= size
                    progressed = True
                    break
            if not progressed:
                break
        return chosen


# --------------------------------------------------------------------------- language-model engine


def clean_continuation(
    prompt: str,
    continuation: str,
    max_words: int = DEFAULT_MAX_WORDS,
    style: Literal["phrases", "tail"] = "phrases",
) -> str:
    """Turn raw model output into what gets appended to ``prompt``.

    Keeps only words made of letters (and inner hyphens), drops words already
    in the prompt, repeats, function words and words under three letters, and
    stops after ``max_words`` words. ``style="phrases"`` keeps the model's own
    grouping (text between punctuation) as ", "-separated phrases;
    ``style="tail"`` joins the words with spaces. Returns "" when nothing is
    left.
    """
    _check_budget("max_words", max_words)
    if style not in ("phrases", "tail"):
        raise ExpansionError(f"style must be 'phrases' or 'tail', not {style!r}")
    used = _content_words(prompt)
    groups: list[list[str]] = []
    budget = max_words
    for segment in _PHRASE_BREAK.split(_URL.sub(" ", continuation)):
        if budget == 0:
            break
        kept: list[str] = []
        for token in segment.split():
            word = token.strip(_WRAPPING)
            if not _LM_WORD.fullmatch(word):
                continue  # digits, "(word:1.2)" weights, URLs, stray symbols
            lower = word.lower()
            letters = _content_words(lower)
            if not letters or lower in _FUNCTION_WORDS:
                continue
            # A hyphenated word repeats the prompt when any of its parts does
            # ("sun-lit" after "sun"), and then blocks those parts in turn.
            if lower in used or letters & used:
                continue
            kept.append(word)
            used.add(lower)
            used |= letters
            budget -= 1
            if budget == 0:
                break
        if kept:
            groups.append(kept)
    if style == "tail":
        return " ".join(word for group in groups for word in group)
    return ", ".join(" ".join(group) for group in groups)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _check_model_directory(directory: Path) -> None:
    # transformers' own errors for a half-written directory talk about
    # sentencepiece and slow tokenizers; name the missing files instead.
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, tokenizer_config.json)")
    if missing:
        raise ExpansionError(
            f"the prompt-expansion model directory {str(directory)!r} lacks {' and '.join(missing)}; "
            "save both the model and its tokenizer there with save_pretrained"
        )


def _reason(exc: BaseException) -> str:
    # Messages from transformers end with "." and span lines; ours add a sentence after them.
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


# torch.manual_seed reseeds the process-wide generator that generate() samples
# from (generate() takes no torch.Generator). Two expansions sampling at once
# would draw from each other's stream and lose per-seed determinism, so all
# generation in the process is serialised here, whichever instance runs it.
_GENERATION_LOCK = threading.Lock()


class LanguageModelExpander:
    """Let a causal language model continue the prompt, then clean the continuation.

    ``model_path`` is a directory written by ``save_pretrained`` (what
    :mod:`farm.hub` returns for a pulled model) or a hub id, loaded with
    ``AutoTokenizer`` / ``AutoModelForCausalLM``. Loading takes seconds and
    memory, so a process should hold one instance: :func:`make_expander`
    caches them.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_words: int = DEFAULT_MAX_WORDS,
        style: Literal["phrases", "tail"] = "phrases",
        top_k: int = 50,
        top_p: float = 0.95,
        temperature: float = 1.0,
        local_files_only: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_words = _check_budget("max_words", max_words)
        if style not in ("phrases", "tail"):
            raise ExpansionError(f"style must be 'phrases' or 'tail', not {style!r}")
        self.style = style
        if top_k < 1 or not 0.0 < top_p <= 1.0 or temperature <= 0:
            raise ExpansionError(f"sampling needs top_k >= 1, 0 < top_p <= 1 and temperature > 0; got {top_k}, {top_p}, {temperature}")
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ExpansionError(f"{device!r} is not a torch device; use e.g. 'cpu' or 'cuda:0'") from exc
        # float32 unless told otherwise: the model is small and half precision
        # on CPU is slow or unsupported for some ops.
        self.dtype = dtype if dtype is not None else torch.float32

        location = os.fspath(model_path)
        self.model_path = location
        looks_local = Path(location).expanduser().exists() or location.startswith((".", "/", "~", os.sep)) or (
            os.altsep is not None and os.altsep in location
        )
        if looks_local and not Path(location).expanduser().is_dir():
            raise ExpansionError(
                f"the prompt-expansion model directory {location!r} does not exist; point model_path at a directory "
                "written by save_pretrained (config.json, weights and tokenizer files)"
            )
        if looks_local:
            location = str(Path(location).expanduser())
            _check_model_directory(Path(location))

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_files_only)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ImportError... here
            raise ExpansionError(
                f"cannot load the tokenizer of the prompt-expansion model {location!r}: {_reason(exc)}. "
                "The directory (or hub repository) needs tokenizer files saved with save_pretrained "
                "(tokenizer.json and tokenizer_config.json)."
            ) from exc
        try:
            # `dtype` is the transformers 5 name of the former `torch_dtype`.
            model = AutoModelForCausalLM.from_pretrained(location, dtype=self.dtype, local_files_only=local_files_only)
        except Exception as exc:  # same variety as above, plus safetensors and torch errors
            raise ExpansionError(
                f"cannot load the prompt-expansion model {location!r} as a causal language model: {_reason(exc)}. "
                "Use a model AutoModelForCausalLM supports (GPT-2, Llama, ...) saved with save_pretrained "
                "(config.json and model.safetensors)."
            ) from exc
        try:
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise ExpansionError(f"cannot move the prompt-expansion model to {self.device}: {exc}; pick an available device") from exc

        self.pad_token_id, self.eos_token_id = self._special_token_ids()
        # A prompt plus new tokens longer than the position table fails inside
        # forward() with an index error; expand() trims the prompt to fit.
        self.max_positions: int | None = getattr(self.model.config, "max_position_embeddings", None)
        logger.info("loaded prompt-expansion model %s on %s (%s)", self.model_path, self.device, self.dtype)

    def _special_token_ids(self) -> tuple[int | None, int | None]:
        tokenizer, config = self.tokenizer, self.model.config
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        # GPT-2 style models ship without a pad token; generate() only needs
        # one to fill finished rows, and eos is the usual stand-in.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return pad, eos

    def _suppressed_token_ids(self) -> list[int]:
        # Never sample padding, "unknown" or a fresh beginning-of-text: they
        # decode to nothing and only waste the token budget. eos stays allowed
        # so the model can end early.
        tokenizer = self.tokenizer
        candidates = {self.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id}
        return sorted(t for t in candidates if t is not None and t != self.eos_token_id)

    def expand(self, prompt: str, seed: int, max_new_tokens: int = 40) -> str:
        """Return ``prompt`` followed by the cleaned continuation sampled with ``seed``."""
        import torch

        _check_prompt(prompt)
        _check_seed(seed)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ExpansionError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")

        encoded = self.tokenizer(prompt.strip(), return_tensors="pt")
        input_ids = encoded["input_ids"]
        attention_mask = encoded.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.max_positions:
            room = self.max_positions - max_new_tokens
            if room < 1:
                raise ExpansionError(
                    f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a model of "
                    f"{self.max_positions} positions; ask for fewer new tokens"
                )
            # The end of the prompt is what the continuation follows from, so
            # a prompt too long for the model keeps its last tokens.
            input_ids, attention_mask = input_ids[:, -room:], attention_mask[:, -room:]
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)

        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with _GENERATION_LOCK, torch.random.fork_rng(devices=devices), torch.inference_mode():
            # fork_rng puts the global generator state back afterwards, so an
            # expansion does not shift the random stream of other code in the
            # process (anything that still draws from the global generator).
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                num_beams=1,
                top_k=self.top_k,
                top_p=self.top_p,
                temperature=self.temperature,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
                suppress_tokens=self._suppressed_token_ids() or None,
            )
        continuation = self.tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)
        addition = clean_continuation(prompt, continuation, self.max_words, self.style)
        logger.debug("lm expansion seed=%d raw=%r kept=%r", seed, continuation, addition)
        return _append(prompt, addition)


# --------------------------------------------------------------------------- factory

_LM_EXPANDERS: dict[tuple[str, str], LanguageModelExpander] = {}
_LM_EXPANDERS_LOCK = threading.Lock()


def make_expander(
    engine: str,
    model_path: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
) -> BuiltinExpander | LanguageModelExpander:
    """The expander for ``engine``: "builtin" or "lm" (which needs ``model_path``).

    Language-model expanders are cached per (model, device): loading is the
    expensive part, and a worker should hold one model however many jobs ask
    for expansion. ``model_path`` is ignored by the builtin engine.
    """
    if engine == "builtin":
        return BuiltinExpander()
    if engine != "lm":
        raise ExpansionError(f"unknown prompt-expansion engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if model_path is None or not os.fspath(model_path).strip():
        raise ExpansionError(
            "the 'lm' prompt-expansion engine needs model_path: a directory written by save_pretrained "
            "or a hub id of a causal language model"
        )
    location = os.fspath(model_path)
    local = Path(location).expanduser()
    key = (str(local.resolve()) if local.exists() else location, str(device))
    # Held while loading so two threads asking at once load the model once.
    with _LM_EXPANDERS_LOCK:
        expander = _LM_EXPANDERS.get(key)
        if expander is None:
            expander = _LM_EXPANDERS[key] = LanguageModelExpander(location, device=device)
    return expander


# --------------------------------------------------------------------------- test model

_TINY_SPECIAL_TOKENS = ("<unk>", "<pad>", "<bos>", "<eos>")


def write_tiny_causal_lm(directory: str | os.PathLike[str]) -> Path:
    """Write a tiny random-weight GPT-2 and its tokenizer to ``directory``; return the path.

    The tokenizer is word level over the words of the shipped vocabulary plus
    "," (so the model can emit phrase breaks) and special tokens; everything is
    built locally, no hub access. Weights are drawn from a fixed seed, so the
    same files come out every time. Loads with ``AutoTokenizer`` and
    ``AutoModelForCausalLM``.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)

    words = sorted({word for phrases in load_vocabulary().values() for phrase in phrases for word in _LETTERS.findall(phrase.lower())})
    tokens = [*_TINY_SPECIAL_TOKENS, ",", *words]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    # Splits on whitespace and between word characters and punctuation, so
    # "light," is "light" + ",".
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        # Without this the tokenizer also returns token_type_ids, which causal
        # models other than GPT-2 reject in forward().
        model_input_names=["input_ids", "attention_mask"],
    )

    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_layer=2,
        n_head=2,
        n_embd=32,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    # Fixed weights without disturbing the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)

    # transformers 5 records the class as "TokenizersBackend", a name
    # transformers 4 does not know; "PreTrainedTokenizerFast" loads the same
    # tokenizer.json in both (5 maps it to TokenizersBackend).
    config_file = target / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    logger.debug("wrote a tiny causal LM (%d tokens) to %s", len(vocab), target)
    return target
