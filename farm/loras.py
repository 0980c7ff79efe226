"""The LoRA registry: adapters a request applies with a weight.

A LoRA is a local folder with one ``.safetensors`` file in the diffusers /
kohya layout (what ``save_lora_weights`` writes and most published LoRAs
use). Its sha256 is recorded when it is added and checked by the worker
before it is loaded, so the lineage names exactly the weights that ran.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.models import LoraEntry
from farm.registry import FAMILIES, RegistryError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraInfo:
    id: str
    family: str
    source: str
    weights_file: str
    weights_sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_file(folder: Path) -> Path:
    if folder.is_file() and folder.suffix == ".safetensors":
        return folder
    if not folder.is_dir():
        raise RegistryError(f"{folder} is neither a folder nor a .safetensors file")
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise RegistryError(f"{folder} must hold exactly one .safetensors LoRA file; found {len(files)}")
    return files[0]


def add_lora(session: Session, lora_id: str, source: str, *, family: str, description: str = "") -> LoraEntry:
    if family not in FAMILIES:
        raise RegistryError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if session.get(LoraEntry, lora_id) is not None:
        raise RegistryError(f"LoRA {lora_id!r} is already registered")
    weights = _weights_file(Path(source).expanduser().resolve())
    entry = LoraEntry(id=lora_id, source=str(weights.parent), family=family, weights_file=weights.name,
                      weights_sha256=file_sha256(weights), description=description)
    session.add(entry)
    session.flush()
    logger.info("registered LoRA %s (%s) from %s", lora_id, family, weights)
    return entry


def lora_infos(session: Session) -> dict[str, LoraInfo]:
    rows = session.execute(select(LoraEntry)).scalars()
    return {r.id: LoraInfo(r.id, r.family, r.source, r.weights_file, r.weights_sha256) for r in rows}


def list_loras(session: Session) -> list[LoraEntry]:
    return list(session.execute(select(LoraEntry).order_by(LoraEntry.id)).scalars())
