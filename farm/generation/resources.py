"""The style, preset and wildcard libraries and the prompt expander of a process,
loaded once from settings (a style file edited on disk needs a restart)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from farm.generation.presets import PresetLibrary
from farm.generation.styles import StyleLibrary
from farm.generation.wildcards import WildcardLibrary

logger = logging.getLogger(__name__)


@dataclass
class GenerationResources:
    styles: StyleLibrary
    presets: PresetLibrary
    wildcards: WildcardLibrary
    expansion_engine: str
    expansion_model: str | None
    _expander: object | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def expander(self):
        """The prompt expander, built on first use (an LM engine loads its model then)."""
        with self._lock:
            if self._expander is None:
                from farm.generation.expansion import make_expander

                self._expander = make_expander(self.expansion_engine, self.expansion_model)
            return self._expander


_cache: dict[tuple, GenerationResources] = {}
_cache_lock = threading.Lock()


def generation_resources(settings) -> GenerationResources:
    key = (settings.styles_dir, settings.presets_dir, settings.wildcards_dir, settings.prompt_expansion_engine, settings.prompt_expansion_model)
    with _cache_lock:
        if key not in _cache:
            style_dirs = [settings.styles_dir] if settings.styles_dir else []
            preset_dirs = [settings.presets_dir] if settings.presets_dir else []
            styles = StyleLibrary.load(style_dirs)
            _cache[key] = GenerationResources(
                styles=styles, presets=PresetLibrary.load(preset_dirs, style_library=styles),
                wildcards=WildcardLibrary.load([settings.wildcards_dir] if settings.wildcards_dir else []),
                expansion_engine=settings.prompt_expansion_engine, expansion_model=settings.prompt_expansion_model,
            )
            logger.info("loaded %d styles, %d presets and %d wildcards", len(styles), len(_cache[key].presets),
                        len(_cache[key].wildcards))
        return _cache[key]
