"""Presets: named bundles of generation settings a request can start from.

A preset fills the fields of a generation request that the request leaves
out; whatever the request sets itself wins. Its styles go in front of the
request's own. ``model`` is either null (the farm's default model) or a hint
such as ``{"family": "sdxl"}`` that the caller resolves to a registered model.

Built-in presets ship as ``data/presets.json``; user directories (each
``*.json`` a list of preset objects) add presets and override built-in ones by
name. Every problem with a file raises :class:`PresetError` naming the file.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.generation.jsonfiles import json_files, read_builtin, read_json
from farm.generation.styles import RANDOM_STYLE, StyleLibrary
from farm.families import renderer_names
from farm.spec import PERFORMANCE_MODES, SAMPLERS, SIGMA_SCHEDULES

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "builtin"
MODEL_FAMILIES = renderer_names()

_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_ASPECT = re.compile(r"^(\d+)\*(\d+)$")
_FIELDS = (
    "name", "description", "model", "styles", "performance", "guidance_scale",
    "sampler", "scheduler", "aspect_ratio", "negative_prompt",
)
# Same range as GenerationRequest.guidance_scale, so a preset never fills in
# a value the request check would then refuse.
_GUIDANCE_RANGE = (0.0, 30.0)
_MIN_SIDE = 64


class PresetError(Exception):
    """A preset file that cannot be read, or a preset name that is not known."""


@dataclass(frozen=True)
class Preset:
    """One preset; None in a setting means "the preset leaves it to the request or the farm"."""

    name: str
    description: str = ""
    model_family: str | None = None  # from {"family": ...}; None = the farm's default model
    styles: tuple[str, ...] = ()
    performance: str | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    aspect_ratio: str | None = None  # "W*H"
    negative_prompt: str = ""
    source: str = BUILTIN_SOURCE  # "builtin", or the path of the user file that defined it

    @property
    def model(self) -> dict[str, str] | None:
        """The model hint as written in preset files."""
        return {"family": self.model_family} if self.model_family else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "styles": list(self.styles),
            "performance": self.performance,
            "guidance_scale": self.guidance_scale,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "aspect_ratio": self.aspect_ratio,
            "negative_prompt": self.negative_prompt,
            "source": self.source,
        }


class PresetLibrary:
    """Presets by name; build one with :meth:`load`."""

    def __init__(self, presets: Iterable[Preset] = ()) -> None:
        self._presets: dict[str, Preset] = {}
        for preset in presets:
            self._presets[preset.name] = preset

    @classmethod
    def load(
        cls,
        extra_dirs: Iterable[Path | str] = (),
        *,
        style_library: StyleLibrary | None = None,
    ) -> PresetLibrary:
        """The built-in presets, then every ``*.json`` in ``extra_dirs`` in order.

        With ``style_library``, every style a preset names must exist in it,
        so a typo in a preset file fails at load time rather than on the
        first request that uses the preset.
        """
        library = cls(_parse_presets(_read_builtin(), BUILTIN_SOURCE))
        for directory in extra_dirs:
            for path in _json_files(Path(directory)):
                for preset in _parse_presets(_read_json(path), str(path)):
                    replaced = library._presets.get(preset.name)
                    if replaced is not None:
                        logger.info("preset %r from %s overrides the one from %s", preset.name, path, replaced.source)
                    library._presets[preset.name] = preset
        if style_library is not None:
            library.check_styles(style_library)
        logger.debug("loaded %d presets", len(library))
        return library

    def check_styles(self, style_library: StyleLibrary) -> None:
        """PresetError if a preset names a style that ``style_library`` lacks."""
        for preset in self._presets.values():
            for style in preset.styles:
                if style != RANDOM_STYLE and style not in style_library:
                    close = difflib.get_close_matches(style, style_library.names(), n=3, cutoff=0.5)
                    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                    raise PresetError(f"{_where(preset.source)}: preset {preset.name!r} names unknown style {style!r}{hint}")

    def names(self) -> list[str]:
        return sorted(self._presets)

    def get(self, name: str) -> Preset:
        preset = self._presets.get(name.strip().lower())
        if preset is None:
            close = difflib.get_close_matches(name.strip().lower(), self.names(), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"available: {', '.join(self.names())}"
            raise PresetError(f"unknown preset {name!r}; {hint}")
        return preset

    def all(self) -> list[Preset]:
        return [self._presets[name] for name in self.names()]

    def listing(self) -> list[dict[str, Any]]:
        """JSON-ready rows for ``GET /api/v1/presets``."""
        return [preset.as_dict() for preset in self.all()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._presets

    def __len__(self) -> int:
        return len(self._presets)


def apply_preset(
    preset: Preset,
    request: dict[str, Any],
    *,
    model_for_family: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """A copy of ``request`` with the fields it leaves unset (absent or None) taken from ``preset``.

    - Explicit request fields always win.
    - The preset's styles go first, then the request's that are not among them.
    - ``aspect_ratio`` is filled only when the request gives no size at all
      (the request check refuses aspect_ratio next to width/height).
    - When the request picks a different ``performance`` than the preset, the
      preset's sampler, scheduler and guidance are left out: a performance
      mode chooses those together with the step count, and the preset's
      values were tuned for its own mode (a 4-step mode with a 30-step sampler
      setting renders noise).
    - A model family hint sets ``model`` only through ``model_for_family``
      (family -> a registered model id, or None); without one, or when it
      finds nothing, the request keeps the farm's default model.
    """
    result = dict(request)

    def is_unset(key: str) -> bool:
        return result.get(key) is None

    if is_unset("model") and preset.model_family and model_for_family is not None:
        model_id = model_for_family(preset.model_family)
        if model_id:
            result["model"] = model_id
        else:
            logger.info("preset %r prefers a %s model but none is registered; using the default", preset.name, preset.model_family)

    requested_mode = request.get("performance")
    if is_unset("performance") and preset.performance is not None:
        result["performance"] = preset.performance
    mode_overridden = requested_mode is not None and requested_mode != preset.performance
    if not mode_overridden:
        for key in ("guidance_scale", "sampler", "scheduler"):
            value = getattr(preset, key)
            if value is not None and is_unset(key):
                result[key] = value

    if preset.aspect_ratio is not None and all(is_unset(key) for key in ("aspect_ratio", "width", "height")):
        result["aspect_ratio"] = preset.aspect_ratio
    if preset.negative_prompt and is_unset("negative_prompt"):
        result["negative_prompt"] = preset.negative_prompt

    requested_styles = result.get("styles")
    if preset.styles and (requested_styles is None or isinstance(requested_styles, list)):
        # Left alone when it is not a list: the request check reports that.
        own = list(requested_styles or [])
        # Every "random" is a separate draw, so those are never merged away.
        result["styles"] = list(preset.styles) + [
            name for name in own if name == RANDOM_STYLE or name not in preset.styles
        ]
    return result


# --------------------------------------------------------------------------- reading files


def _where(source: str) -> str:
    return "built-in presets.json" if source == BUILTIN_SOURCE else source


def _read_builtin() -> Any:
    return read_builtin("presets.json", PresetError)


def _json_files(directory: Path) -> list[Path]:
    return json_files(directory, "preset", PresetError)


def _read_json(path: Path) -> Any:
    return read_json(path, PresetError)


def _parse_presets(data: Any, source: str) -> list[Preset]:
    where = _where(source)
    if not isinstance(data, list):
        raise PresetError(f"{where}: must be a JSON list of preset objects, not {type(data).__name__}")
    presets: list[Preset] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        preset = _parse_preset(entry, source, f"{where}: preset #{index + 1}")
        if preset.name in seen:
            raise PresetError(f"{where}: preset {preset.name!r} is defined twice")
        seen.add(preset.name)
        presets.append(preset)
    return presets


def _parse_preset(entry: Any, source: str, where: str) -> Preset:
    if not isinstance(entry, dict):
        raise PresetError(f"{where}: must be an object with at least a name")
    if isinstance(entry.get("name"), str):
        where = f"{where} ({entry['name']!r})"
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise PresetError(f"{where}: unknown field {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")

    name = entry.get("name")
    if not isinstance(name, str):
        raise PresetError(f"{where}: missing field name" if name is None else f"{where}: name must be a string")
    name = name.strip()
    if not _NAME.match(name):
        raise PresetError(f"{where}: name must be lowercase kebab-case like 'fast-draft'")

    description = _optional_str(entry, "description", where) or ""
    negative_prompt = _optional_str(entry, "negative_prompt", where) or ""

    model = entry.get("model")
    model_family = None
    if model is not None:
        if not isinstance(model, dict) or set(model) != {"family"}:
            raise PresetError(f"{where}: model must be null or {{\"family\": ...}} with one of {', '.join(MODEL_FAMILIES)}")
        model_family = model["family"]
        if model_family not in MODEL_FAMILIES:
            raise PresetError(f"{where}: model family {model_family!r} is not one of {', '.join(MODEL_FAMILIES)}")

    styles = entry.get("styles")
    if styles is None:
        styles = []
    if not isinstance(styles, list) or not all(isinstance(style, str) for style in styles):
        raise PresetError(f"{where}: styles must be a list of style names")
    styles = [style.strip().lower() for style in styles]
    repeated = sorted({style for style in styles if style != RANDOM_STYLE and styles.count(style) > 1})
    if repeated:
        raise PresetError(f"{where}: styles names {', '.join(repeated)} more than once")

    performance = _optional_choice(entry, "performance", PERFORMANCE_MODES, where)
    sampler = _optional_choice(entry, "sampler", SAMPLERS, where)
    scheduler = _optional_choice(entry, "scheduler", SIGMA_SCHEDULES, where)

    guidance = entry.get("guidance_scale")
    if guidance is not None:
        # bool is an int in Python; `true` in a preset file is a mistake.
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise PresetError(f"{where}: guidance_scale must be a number")
        low, high = _GUIDANCE_RANGE
        if not low <= guidance <= high:
            raise PresetError(f"{where}: guidance_scale {guidance} is outside {low:g}..{high:g}")
        guidance = float(guidance)

    aspect_ratio = _optional_str(entry, "aspect_ratio", where)
    if aspect_ratio is not None:
        aspect_ratio = _check_aspect_ratio(aspect_ratio, where)

    return Preset(
        name=name,
        description=description.strip(),
        model_family=model_family,
        styles=tuple(styles),
        performance=performance,
        guidance_scale=guidance,
        sampler=sampler,
        scheduler=scheduler,
        aspect_ratio=aspect_ratio,
        negative_prompt=negative_prompt.strip(),
        source=source,
    )


def _optional_str(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise PresetError(f"{where}: {key} must be a string")
    return value


def _optional_choice(entry: dict[str, Any], key: str, choices: Iterable[str], where: str) -> str | None:
    value = entry.get(key)
    if value is not None and value not in choices:
        raise PresetError(f"{where}: {key} {value!r} is not one of {', '.join(choices)}")
    return value


def _check_aspect_ratio(value: str, where: str) -> str:
    match = _ASPECT.match(value.strip())
    if not match:
        raise PresetError(f"{where}: aspect_ratio {value!r} is not like '1152*896'")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side < _MIN_SIDE or side % 8:
            raise PresetError(f"{where}: aspect_ratio {value!r} needs sides of at least {_MIN_SIDE} that are multiples of 8")
    return f"{width}*{height}"
