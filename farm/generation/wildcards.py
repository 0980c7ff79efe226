"""Wildcards: ``__name__`` in a prompt stands for one line of the wildcard file ``name``.

A wildcard file is plain text, one option per line; blank lines and lines
starting with ``#`` are skipped. The built-in set ships as
``data/wildcards/*.txt``; a user directory (``FARM_WILDCARDS_DIR``) adds files
and overrides built-in ones by name. A file in a subfolder is named by its
path: ``people/job.txt`` is ``__people/job__``.

The line a wildcard stands for is drawn with :class:`random.Random` seeded by
the image's seed, the field (prompt or negative prompt) and the wildcard's
place in it, so the same seed always gives the same text while two
``__color__`` in one prompt may differ. A chosen line may hold wildcards of its
own; those expand too, down to :data:`MAX_NESTING` levels. A library whose
files refer to unknown names, to each other in a loop, or deeper than that is
refused when it loads, so a request only fails for what its own text names.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "builtin"
#: Most levels of wildcards inside chosen lines (the prompt's own are level 1).
MAX_NESTING = 5
# Lowercase words joined by "_" or "-", folders by "/": "time_of_day", "people/job".
_NAME = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*(?:/[a-z0-9]+(?:[_-][a-z0-9]+)*)*$")
# A wildcard in text; any case is accepted and read as lowercase, so
# "__Color__" is not silently rendered as written.
TOKEN = re.compile(r"__([A-Za-z0-9]+(?:[_/-][A-Za-z0-9]+)*)__")


class WildcardError(Exception):
    """A wildcard file that cannot be read, or a wildcard name that is not known."""

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


@dataclass(frozen=True)
class Wildcard:
    name: str
    lines: tuple[str, ...]
    source: str  # "builtin", or the path of the user file that defined it


@dataclass(frozen=True)
class Expansion:
    """A text with its wildcards replaced, and each choice in the order it was made."""

    text: str
    choices: list[dict[str, Any]] = field(default_factory=list)


class WildcardLibrary:
    """Wildcards by name; build one with :meth:`load`."""

    def __init__(self, wildcards: Iterable[Wildcard] = ()) -> None:
        self._wildcards: dict[str, Wildcard] = {}
        for wildcard in wildcards:
            self._wildcards[wildcard.name] = wildcard

    @classmethod
    def load(cls, extra_dirs: Iterable[Path | str] = ()) -> WildcardLibrary:
        """The built-in wildcards, then every ``*.txt`` under ``extra_dirs`` in order (later wins)."""
        library = cls(_builtin_wildcards())
        for directory in extra_dirs:
            for wildcard in _user_wildcards(Path(directory)):
                replaced = library._wildcards.get(wildcard.name)
                if replaced is not None:
                    logger.info("wildcard %r from %s overrides the one from %s", wildcard.name, wildcard.source, replaced.source)
                library._wildcards[wildcard.name] = wildcard
        library.check_references()
        logger.debug("loaded %d wildcards", len(library))
        return library

    def check_references(self) -> None:
        """WildcardError if a line names an unknown wildcard, or wildcards nest in a loop or too deep."""
        for wildcard in self._wildcards.values():
            for line in wildcard.lines:
                for name in referenced_names(line):
                    if name not in self._wildcards:
                        raise WildcardError(f"{_where(wildcard.source)}: the line {line!r} of {wildcard.name!r} "
                                            f"names {_token(name)}, which is not a wildcard")
        depths: dict[str, int] = {}
        for name in self.names():
            self._depth(name, (), depths)

    def _depth(self, name: str, path: tuple[str, ...], depths: dict[str, int]) -> int:
        """Levels of wildcards ``name`` can expand into, itself included."""
        if name in path:
            loop = " → ".join(_token(n) for n in (*path[path.index(name):], name))
            raise WildcardError(f"{_where(self._wildcards[name].source)}: wildcards refer to each other in a loop: {loop}")
        if name not in depths:
            inner = [self._depth(child, (*path, name), depths)
                     for line in self._wildcards[name].lines for child in referenced_names(line)]
            depths[name] = 1 + max(inner, default=0)
            if depths[name] > MAX_NESTING:
                raise WildcardError(f"{_where(self._wildcards[name].source)}: {_token(name)} nests wildcards "
                                    f"{depths[name]} levels deep; at most {MAX_NESTING} are expanded")
        return depths[name]

    def names(self) -> list[str]:
        """All wildcard names, sorted."""
        return sorted(self._wildcards)

    def get(self, name: str) -> Wildcard:
        """The wildcard called ``name``; WildcardError with the closest names if there is none."""
        wildcard = self._wildcards.get(name.strip().lower())
        if wildcard is None:
            raise unknown_wildcard(name, self.names())
        return wildcard

    def unknown_names(self, text: str) -> list[str]:
        """The wildcard names in ``text`` that this library lacks, each once, in order."""
        unknown: list[str] = []
        for name in referenced_names(text):
            if name not in self._wildcards and name not in unknown:
                unknown.append(name)
        return unknown

    def listing(self) -> list[dict[str, Any]]:
        """JSON-ready rows for ``GET /api/v1/wildcards``."""
        return [{"name": w.name, "lines": len(w.lines), "source": w.source} for w in map(self.get, self.names())]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._wildcards

    def __len__(self) -> int:
        return len(self._wildcards)


def referenced_names(text: str) -> list[str]:
    """The wildcard names ``text`` uses, lowercase, in order (repeats kept)."""
    return [match.group(1).lower() for match in TOKEN.finditer(text)]


def has_wildcards(text: str | None) -> bool:
    return bool(text) and TOKEN.search(text) is not None


def unknown_wildcard(name: str, known: list[str]) -> WildcardError:
    suggestions = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(_token(s) for s in suggestions)}?" if suggestions
            else "GET /api/v1/wildcards lists them")
    return WildcardError(f"unknown wildcard {_token(name)}; {hint}", suggestions)


def expand_wildcards(library: WildcardLibrary, text: str, seed: int, field_name: str = "prompt") -> Expansion:
    """``text`` with each wildcard replaced by one of its lines, drawn from ``seed``.

    Each wildcard draws with its own generator, seeded by (seed, field, place):
    its place is its ordinal among the wildcards of its text and, for a
    wildcard inside a chosen line, the place of the one that chose that line.
    So the draw of one wildcard does not move when text around it changes, and
    a rerender with the image's seed gives the same prompt.
    """
    choices: list[dict[str, Any]] = []
    expanded = _expand(library, text, seed, field_name, field_name, 1, None, choices)
    return Expansion(expanded, choices)


def _expand(library: WildcardLibrary, text: str, seed: int, field_name: str, place: str, level: int,
            parent: str | None, choices: list[dict[str, Any]]) -> str:
    ordinals = itertools.count()

    def replace(match: re.Match) -> str:
        name = match.group(1).lower()
        here = f"{place}.{next(ordinals)}"
        if level > MAX_NESTING:
            raise WildcardError(f"{_token(parent or name)} nests wildcards deeper than {MAX_NESTING} levels")
        wildcard = library.get(name)
        # A string seed is hashed with SHA-512 by random.Random: the same in
        # every process, unlike hash() of a tuple.
        line = wildcard.lines[random.Random(f"{seed}:{here}").randrange(len(wildcard.lines))]
        choice: dict[str, Any] = {"field": field_name, "name": name, "choice": line}
        if parent is not None:
            choice["within"] = parent
        choices.append(choice)
        return _expand(library, line, seed, field_name, here, level + 1, name, choices)

    return TOKEN.sub(replace, text)


def substitute(text: str, name: str, line: str) -> tuple[str, bool]:
    """``text`` with every ``__name__`` replaced by ``line`` (a campaign's wildcard axis); and whether any was."""
    found = False
    name = name.lower()

    def replace(match: re.Match) -> str:
        nonlocal found
        if match.group(1).lower() != name:
            return match.group(0)
        found = True
        return line

    return TOKEN.sub(replace, text), found


# --------------------------------------------------------------------------- per image


def image_prompts(params: dict[str, Any], index: int) -> tuple[str, str, list[dict[str, Any]]]:
    """The final prompt, final negative prompt and wildcard choices of image ``index`` of a job."""
    images = params.get("wildcard_images")
    if not images:
        return params["final_prompt"], params["final_negative_prompt"], []
    image = images[index]
    return image["final_prompt"], image["final_negative_prompt"], image["wildcards"]


def single_image_params(params: dict[str, Any], index: int) -> dict[str, Any]:
    """A job's params narrowed to its image ``index``, for rendering that image alone again."""
    images = params.get("wildcard_images")
    if not images:
        return dict(params)
    image = images[index]
    return {**params, "final_prompt": image["final_prompt"], "final_negative_prompt": image["final_negative_prompt"],
            "wildcard_images": [image]}


# --------------------------------------------------------------------------- reading files


def _token(name: str) -> str:
    return f"__{name}__"


def _where(source: str) -> str:
    return "built-in wildcards" if source == BUILTIN_SOURCE else source


def parse_lines(text: str) -> tuple[str, ...]:
    """The options of a wildcard file: stripped lines, without blanks and ``#`` comments."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def _wildcard(name: str, text: str, source: str, where: str) -> Wildcard:
    if not _NAME.match(name):
        raise WildcardError(f"{where}: {name!r} is not a wildcard name; use lowercase letters, digits, '_' and '-' "
                            f"(folders with '/'), like 'time_of_day.txt'")
    lines = parse_lines(text)
    if not lines:
        raise WildcardError(f"{where}: has no options; write one per line (lines starting with # are comments)")
    return Wildcard(name=name, lines=lines, source=source)


def _builtin_wildcards() -> list[Wildcard]:
    root = resources.files("farm.generation").joinpath("data", "wildcards")
    found = []
    for relative, entry in _walk(root, ""):
        try:
            text = entry.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WildcardError(f"built-in wildcard {relative}: cannot be read: {exc}") from exc
        found.append(_wildcard(relative.removesuffix(".txt"), text, BUILTIN_SOURCE, f"built-in wildcard {relative}"))
    return found


def _walk(folder, prefix: str) -> Iterator[tuple[str, Any]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".txt"):
            yield f"{prefix}{entry.name}", entry


def _user_wildcards(directory: Path) -> list[Wildcard]:
    if not directory.exists():
        # A configured but not yet created directory means "no user wildcards yet".
        logger.warning("wildcard directory %s does not exist; no user wildcards read from it", directory)
        return []
    if not directory.is_dir():
        raise WildcardError(f"{directory}: is not a directory of wildcard files")
    found = []
    for path in sorted(p for p in directory.rglob("*.txt") if p.is_file()):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WildcardError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise WildcardError(f"{path}: is not UTF-8 text ({exc.reason})") from exc
        name = path.relative_to(directory).with_suffix("").as_posix()
        found.append(_wildcard(name, text, str(path), str(path)))
    return found
