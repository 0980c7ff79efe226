"""The style library and how styles turn a prompt into the final prompt.

A style is a pair of templates. A positive template with a ``{prompt}``
placeholder wraps the prompt ("oil painting of {prompt}, ..."); one without it
only adds words (lighting and mood modifiers). Negatives are phrase lists that
are merged without repeats.

The built-in library ships as ``data/styles.json``; user directories (each
``*.json`` a list of style objects) add styles and override built-in ones by
name. Every problem with a file raises :class:`StyleError` naming the file.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.generation.jsonfiles import json_files, read_builtin, read_json

logger = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
#: The style name that stands for "one style picked from the seed".
RANDOM_STYLE = "random"
BUILTIN_SOURCE = "builtin"

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_REQUIRED_FIELDS = ("name", "category", "positive")
# negative is optional: a user modifier style often has nothing to refuse.
_KNOWN_FIELDS = frozenset((*_REQUIRED_FIELDS, "negative"))
_SPACES = re.compile(r"\s+")


class StyleError(Exception):
    """A style file that cannot be read, or a style name that cannot be applied."""

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


@dataclass(frozen=True)
class Style:
    name: str
    category: str
    positive: str
    negative: str
    source: str  # "builtin", or the path of the user file that defined it

    @property
    def has_placeholder(self) -> bool:
        return PLACEHOLDER in self.positive


class StyleLibrary:
    """Styles by name; build one with :meth:`load`."""

    def __init__(self, styles: Iterable[Style] = ()) -> None:
        self._styles: dict[str, Style] = {}
        for style in styles:
            self._styles[style.name] = style

    @classmethod
    def load(cls, extra_dirs: Iterable[Path | str] = ()) -> StyleLibrary:
        """The built-in styles, then every ``*.json`` in ``extra_dirs`` in order.

        Files in a directory are read in name order, so when two user files
        define the same style the later one wins, predictably.
        """
        library = cls(_parse_styles(_read_builtin(), BUILTIN_SOURCE))
        for directory in extra_dirs:
            for path in _json_files(Path(directory)):
                for style in _parse_styles(_read_json(path), str(path)):
                    replaced = library._styles.get(style.name)
                    if replaced is not None:
                        logger.info("style %r from %s overrides the one from %s", style.name, path, replaced.source)
                    library._styles[style.name] = style
        logger.debug("loaded %d styles", len(library))
        return library

    def names(self) -> list[str]:
        """All style names, sorted."""
        return sorted(self._styles)

    def get(self, name: str) -> Style:
        """The style called ``name``; StyleError with the closest names if there is none."""
        style = self._styles.get(_normalize_name(name))
        if style is None:
            raise _unknown_style(name, self.names())
        return style

    def all(self) -> list[Style]:
        """All styles, by category then name."""
        return sorted(self._styles.values(), key=lambda style: (style.category, style.name))

    def categories(self) -> list[str]:
        return sorted({style.category for style in self._styles.values()})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalize_name(name) in self._styles

    def __len__(self) -> int:
        return len(self._styles)


def apply_styles(
    library: StyleLibrary,
    prompt: str,
    negative: str,
    names: Sequence[str],
    seed: int,
) -> tuple[str, str, list[str]]:
    """Apply the styles ``names`` in order; returns (final_prompt, final_negative, resolved names).

    A style with ``{prompt}`` wraps the prompt built so far; one without only
    appends its words. Negatives are the request's followed by each style's,
    with repeated phrases (case-insensitive) kept once. ``"random"`` stands for
    a style drawn with ``random.Random(seed)`` from those not otherwise chosen,
    so the same seed gives the same picks; ``resolved`` says which it was.
    A style named twice is applied once.
    """
    resolved = _resolve_names(library, names, seed)
    final_prompt = _clean_phrases(prompt)
    negatives = [negative]
    for name in resolved:
        style = library.get(name)
        if style.has_placeholder:
            # str.replace, not str.format: prompts may contain braces.
            final_prompt = style.positive.replace(PLACEHOLDER, final_prompt, 1)
        else:
            final_prompt = f"{final_prompt}, {style.positive}"
        final_prompt = _clean_phrases(final_prompt)
        negatives.append(style.negative)
    return final_prompt, merge_negatives(negatives), resolved


def merge_negatives(negatives: Iterable[str]) -> str:
    """Comma-separated phrases of all ``negatives`` in order, each phrase once (case-insensitive)."""
    seen: set[str] = set()
    phrases: list[str] = []
    for negative in negatives:
        for phrase in _split_phrases(negative):
            key = phrase.casefold()
            if key not in seen:
                seen.add(key)
                phrases.append(phrase)
    return ", ".join(phrases)


def style_listing(library: StyleLibrary) -> list[dict[str, Any]]:
    """The library as JSON-ready rows for ``GET /api/v1/styles``."""
    return [
        {
            "name": style.name,
            "category": style.category,
            "positive": style.positive,
            "negative": style.negative,
            "has_placeholder": style.has_placeholder,
            "source": style.source,
        }
        for style in library.all()
    ]


# --------------------------------------------------------------------------- resolving names


def _resolve_names(library: StyleLibrary, names: Sequence[str], seed: int) -> list[str]:
    requested = [_normalize_name(name) for name in names]
    unknown = [name for name in requested if name != RANDOM_STYLE and name not in library]
    if unknown:
        raise _unknown_style(unknown[0], library.names())
    # Random draws skip every style named explicitly anywhere in the list, not
    # only the ones before it, so a draw never duplicates a later named style.
    taken = {name for name in requested if name != RANDOM_STYLE}
    rng = random.Random(seed)
    resolved: list[str] = []
    for name in requested:
        if name == RANDOM_STYLE:
            # Sorted so the pick depends on the seed and the set of styles,
            # not on the order files were read in.
            candidates = [candidate for candidate in library.names() if candidate not in taken]
            if not candidates:
                raise StyleError("'random' has no style left to pick; every style is already chosen")
            name = rng.choice(candidates)
            taken.add(name)
        elif name in resolved:
            logger.debug("style %r named twice; applied once", name)
            continue
        resolved.append(name)
    return resolved


def _normalize_name(name: str) -> str:
    return name.strip().lower()


def _unknown_style(name: str, known: list[str]) -> StyleError:
    suggestions = difflib.get_close_matches(_normalize_name(name), known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else "GET /api/v1/styles lists them"
    return StyleError(f"unknown style {name!r}; {hint}", suggestions)


# --------------------------------------------------------------------------- text cleanup


def _split_phrases(text: str) -> list[str]:
    phrases = (_SPACES.sub(" ", phrase).strip() for phrase in text.split(","))
    return [phrase for phrase in phrases if phrase]


def _clean_phrases(text: str) -> str:
    """``text`` with single spaces and no empty comma-separated fragments."""
    return ", ".join(_split_phrases(text))


# --------------------------------------------------------------------------- reading files


def _read_builtin() -> Any:
    return read_builtin("styles.json", StyleError)


def _json_files(directory: Path) -> list[Path]:
    return json_files(directory, "style", StyleError)


def _read_json(path: Path) -> Any:
    return read_json(path, StyleError)


def _parse_styles(data: Any, source: str) -> list[Style]:
    where = "built-in styles.json" if source == BUILTIN_SOURCE else source
    if not isinstance(data, list):
        raise StyleError(f"{where}: must be a JSON list of style objects, not {type(data).__name__}")
    styles: list[Style] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        style = _parse_style(entry, source, f"{where}: style #{index + 1}")
        if style.name in seen:
            raise StyleError(f"{where}: style {style.name!r} is defined twice")
        seen.add(style.name)
        styles.append(style)
    return styles


def _parse_style(entry: Any, source: str, where: str) -> Style:
    if not isinstance(entry, dict):
        raise StyleError(f"{where}: must be an object with {', '.join(_REQUIRED_FIELDS)}, negative")
    if isinstance(entry.get("name"), str):
        where = f"{where} ({entry['name']!r})"
    missing = [name for name in _REQUIRED_FIELDS if name not in entry]
    if missing:
        raise StyleError(f"{where}: missing field {', '.join(missing)}")
    unknown = sorted(set(entry) - _KNOWN_FIELDS)
    if unknown:
        raise StyleError(f"{where}: unknown field {', '.join(unknown)}; allowed: {', '.join(sorted(_KNOWN_FIELDS))}")
    for name in _KNOWN_FIELDS & set(entry):
        if not isinstance(entry[name], str):
            raise StyleError(f"{where}: {name} must be a string")
    name = entry["name"].strip()
    if not _NAME.match(name):
        raise StyleError(f"{where}: name must be lowercase kebab-case like 'oil-painting'")
    if name == RANDOM_STYLE:
        raise StyleError(f"{where}: 'random' is reserved for a style picked from the seed")
    category = entry["category"].strip()
    if not category:
        raise StyleError(f"{where}: category must not be empty")
    positive = _SPACES.sub(" ", entry["positive"]).strip()
    if not positive:
        raise StyleError(f"{where}: positive must not be empty")
    if positive.count(PLACEHOLDER) > 1:
        raise StyleError(f"{where}: positive has {PLACEHOLDER} more than once")
    return Style(
        name=name,
        category=category,
        positive=positive,
        negative=_clean_phrases(entry.get("negative", "")),
        source=source,
    )
