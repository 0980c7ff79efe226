"""The host-memory model tier: pipelines evicted from the GPU wait in host RAM.

A pipeline the worker evicts moves here (``put``) instead of being dropped,
up to ``FARM_WORKER_RAM_CACHE_GB``, least recently evicted first out; a later
job for it takes it back (``take``) and moves it to the device, which costs a
host-to-device copy instead of reading and deserialising the files again.

On CUDA the parameters and buffers are moved to pinned (page-locked) host
memory, so the copy back runs at the bus's DMA rate and can be asynchronous
(``non_blocking``). accelerate's offload hooks (``enable_model_cpu_offload``)
were not used: they move components back and forth *during* a call, one
component at a time, which is a different trade (less VRAM, slower renders);
the tier moves whole pipelines *between* jobs and never touches a render.

On the CPU host and device are the same memory: the tier keeps the pipeline
object as it is, and taking it back skips the disk read and deserialisation.

Used by the worker's task thread only (like the pipelines it holds); the
heartbeat thread reads ``models()``, a copy taken under the worker's lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

# The copy that measures the host-to-device rate at start (pinned, 256 MiB):
# large enough that launch latency does not count, small enough to take
# well under a second on any PCIe link.
H2D_PROBE_BYTES = 256 * 2**20


def _modules(pipe) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def move_to_host(pipe, pin: bool) -> None:
    """Move every torch module of ``pipe`` to host memory, pinned when ``pin``.

    ``Module.to("cpu")`` leaves pageable memory; pinning each tensor in place
    (``tensor.data = tensor.data.pin_memory()``) keeps the module objects and
    their parameter identities, so LoRA hooks and the pipeline's references
    stay valid.
    """
    for module in _modules(pipe):
        module.to("cpu")
        if not pin:
            continue
        for tensor in (*module.parameters(), *module.buffers()):
            if not tensor.data.is_pinned():
                tensor.data = tensor.data.pin_memory()


def move_to_device(pipe, device: torch.device) -> None:
    """Move every torch module of ``pipe`` back to ``device`` (asynchronous from pinned memory, then waited for)."""
    for module in _modules(pipe):
        module.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_h2d_gbps(device: torch.device, nbytes: int = H2D_PROBE_BYTES) -> float | None:
    """GB/s of a pinned host-to-device copy on ``device``; None off CUDA."""
    if device.type != "cuda":
        return None
    source = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(source, non_blocking=True)  # warm-up: context, allocator
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    target.copy_(source, non_blocking=True)
    torch.cuda.synchronize(device)
    return nbytes / 1e9 / (time.perf_counter() - started)


class HostTier:
    """Evicted pipelines in host memory: an LRU within ``budget_gb`` (0: off, nothing is kept).

    Items are the worker's ``LoadedModel`` records (``entry_id``, ``pipe``,
    ``vram_gb``); their size in the tier is ``vram_gb`` (the weights' bytes).
    Moves between device and host happen outside the tier's lock, so a
    heartbeat reading ``models()`` never waits for a copy.
    """

    def __init__(self, budget_gb: float, device: torch.device) -> None:
        self.budget_gb = budget_gb
        self.device = device
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def used_gb(self) -> float:
        with self._lock:
            return sum(item.vram_gb for item in self._items.values())

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._items

    def put(self, loaded) -> list[str]:
        """Keep an evicted model in host memory; returns the ids dropped for good (it too, if it cannot fit).

        A quantized variant is kept only where nothing moves (the CPU): the
        packed weights of bitsandbytes and torchao are laid out for their
        device's kernels, and not every format supports ``.to("cpu")``.
        """
        if self.budget_gb <= 0 or loaded.vram_gb > self.budget_gb:
            return [loaded.entry_id]
        if getattr(loaded, "quantization", None) and self.device.type != "cpu":
            return [loaded.entry_id]
        dropped = []
        with self._lock:
            # Room first: what is dropped frees its host memory before the copy.
            held = sum(item.vram_gb for item in self._items.values())
            while self._items and held + loaded.vram_gb > self.budget_gb:
                _, gone = self._items.popitem(last=False)
                held -= gone.vram_gb
                dropped.append(gone.entry_id)
        if self.device.type != "cpu":
            move_to_host(loaded.pipe, pin=self.device.type == "cuda")
        with self._lock:
            self._items[loaded.entry_id] = loaded
        return dropped

    def take(self, model_id: str):
        """The model's record, out of the tier (still in host memory: see ``restore``); None if it is not here."""
        with self._lock:
            return self._items.pop(model_id, None)

    def restore(self, loaded) -> None:
        """Move a record ``take`` returned back onto the device."""
        if self.device.type != "cpu":
            move_to_device(loaded.pipe, self.device)

    def models(self) -> list[dict[str, Any]]:
        """[{"id", "gb"}], least recently evicted first."""
        with self._lock:
            return [{"id": m.entry_id, "gb": round(m.vram_gb, 4)} for m in self._items.values()]
