"""Stopping a render at a step boundary and continuing it later, bit for bit.

A preempted render stops after a denoising iteration and keeps everything the
rest of the render depends on (``StepCheckpoint``): the latents, how many
iterations ran, the sampler's internal state (every attribute of the
diffusers scheduler object: step index, DPM++/UniPC's remembered model
outputs and lower-order counters, Heun's first-order half step, the sigmas),
and the random generators' states (the per-image CPU generators the
noise-adding samplers draw from, and torch's global generator, which the
flow pipelines' stochastic samplers use).

Continuing runs the same pipeline call again with three hooks (``ResumeHooks``):
``prepare_latents`` still runs (so every generator is drawn exactly as in the
first call) but hands the loop the checkpoint's latents; the pipeline's
``interrupt`` flag skips the iterations already done (diffusers' loops test
it once per iteration and ``continue``, so no denoiser call is made); and at
the first iteration that runs, the sampler's state and the generators'
states are put back. From there the loop computes exactly what the
uninterrupted render computed, so the image is the same, bit for bit (tests:
tests/unit/test_resume.py, per family and sampler).

A sampler whose state lives outside the scheduler's plain attributes
(dpmpp_sde's Brownian tree) cannot be captured: its ``SamplerConfig``
says ``resumable=False`` and the farm never preempts it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Checkpoint format; a checkpoint of another version is not resumed (the render starts over).
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A render's state cannot be captured or put back exactly."""


class RenderPreempted(Exception):
    """Raised by ``render`` when it stopped at a step boundary because it was
    asked to; carries what continuing needs."""

    def __init__(self, checkpoint: "StepCheckpoint") -> None:
        super().__init__(f"stopped after iteration {checkpoint.step} of {checkpoint.total}")
        self.checkpoint = checkpoint


@dataclass
class StepCheckpoint:
    """The state of one image's render after ``step`` denoising iterations."""

    step: int  # iterations done: the loop continues at this index
    total: int  # iterations of the whole render
    latents: torch.Tensor
    scheduler_state: dict[str, Any]
    generator_states: list[torch.Tensor]
    global_rng_state: torch.Tensor
    cuda_rng_state: torch.Tensor | None = None
    # Set by the worker: which image of the job this is, and the images
    # before it, finished (PNG: lossless, so they encode to the same bytes).
    image_index: int = 0
    done_images: list[bytes] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        payload = {
            "version": FORMAT_VERSION, "step": self.step, "total": self.total, "latents": self.latents.detach().cpu(),
            "scheduler_state": _portable(self.scheduler_state), "generator_states": list(self.generator_states),
            "global_rng_state": self.global_rng_state, "cuda_rng_state": self.cuda_rng_state,
            "image_index": self.image_index, "done_images": list(self.done_images),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "StepCheckpoint":
        # weights_only: a checkpoint is data (tensors, numbers, lists), never code.
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if payload.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {payload.get('version')!r} is not {FORMAT_VERSION}")
        return cls(step=payload["step"], total=payload["total"], latents=payload["latents"],
                   scheduler_state=payload["scheduler_state"], generator_states=payload["generator_states"],
                   global_rng_state=payload["global_rng_state"], cuda_rng_state=payload["cuda_rng_state"],
                   image_index=payload["image_index"], done_images=payload["done_images"])


_PLAIN = (int, float, bool, str, type(None))


def _capturable(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_capturable(v) for v in value)
    return False


def _portable(value: Any) -> Any:
    """Tensors on the CPU (a checkpoint may continue on another device); the rest as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v) for v in value)
    return value


def capture_scheduler(scheduler) -> dict[str, Any]:
    """Every attribute of a diffusers scheduler except its (unchanging) config.

    Raises CheckpointError where an attribute is neither a tensor nor plain
    data (a noise sampler object, say): such a sampler cannot be resumed.
    """
    state: dict[str, Any] = {}
    for name, value in vars(scheduler).items():
        if name == "_internal_dict":
            continue
        if not _capturable(value):
            raise CheckpointError(f"{type(scheduler).__name__}.{name} ({type(value).__name__}) cannot be checkpointed")
        state[name] = value.clone() if isinstance(value, torch.Tensor) else _copy(value)
    return state


def _copy(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(v.clone() if isinstance(v, torch.Tensor) else _copy(v) for v in value)
    return value


def restore_scheduler(scheduler, state: dict[str, Any], device: torch.device) -> None:
    """Put a captured state back on a scheduler of the same class. A tensor
    goes to the device the fresh scheduler keeps that attribute on (Euler
    keeps its sigmas on the CPU), otherwise to the render's device."""
    for name, value in state.items():
        current = getattr(scheduler, name, None)
        target = current.device if isinstance(current, torch.Tensor) else device
        setattr(scheduler, name, _to_device(value, target))


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def capture(pipe, step: int, total: int, latents: torch.Tensor, generators: list[torch.Generator]) -> StepCheckpoint:
    """The checkpoint of a render whose callback runs after iteration ``step - 1``."""
    cuda_state = None
    if latents.device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(latents.device)
    return StepCheckpoint(
        step=step, total=total, latents=latents.detach().clone(), scheduler_state=capture_scheduler(pipe.scheduler),
        generator_states=[g.get_state() for g in generators], global_rng_state=torch.get_rng_state(),
        cuda_rng_state=cuda_state,
    )


class _SkipDone:
    """The pipeline's ``_interrupt`` while a render continues: true for the
    iterations already done (the loop skips them), then false; at the first
    false it puts the sampler and the generators back as they were."""

    def __init__(self, hooks: "ResumeHooks") -> None:
        self.hooks = hooks
        self.asked = 0

    def __bool__(self) -> bool:
        self.asked += 1
        if self.asked <= self.hooks.checkpoint.step:
            return True
        if self.asked == self.hooks.checkpoint.step + 1:
            self.hooks.restore_states()
        return False


class ResumeHooks:
    """Installs the hooks that make one pipeline call continue from ``checkpoint``
    (a context manager; they are removed on exit)."""

    def __init__(self, pipe, checkpoint: StepCheckpoint, generators: list[torch.Generator]) -> None:
        if len(generators) != len(checkpoint.generator_states):
            raise CheckpointError(f"the checkpoint has {len(checkpoint.generator_states)} generator states, "
                                  f"the render {len(generators)} generators")
        self.pipe, self.checkpoint, self.generators = pipe, checkpoint, generators
        self.restored = False
        self.checked = False

    def __enter__(self) -> "ResumeHooks":
        original = self.pipe.prepare_latents

        def prepare_latents(*args, **kwargs):
            result = original(*args, **kwargs)
            # After the pipeline reset its _interrupt for this call and before its loop.
            self.pipe._interrupt = _SkipDone(self)
            if isinstance(result, tuple):  # FLUX: (latents, position ids)
                fresh = result[0]
                return (self.checkpoint.latents.to(device=fresh.device, dtype=fresh.dtype), *result[1:])
            return self.checkpoint.latents.to(device=result.device, dtype=result.dtype)

        # An instance attribute shadows the method for this call only.
        self.pipe.prepare_latents = prepare_latents
        return self

    def __exit__(self, *exc) -> None:
        self.pipe.__dict__.pop("prepare_latents", None)
        self.pipe._interrupt = False

    def restore_states(self) -> None:
        checkpoint = self.checkpoint
        device = _execution_device(self.pipe)
        restore_scheduler(self.pipe.scheduler, checkpoint.scheduler_state, device)
        for generator, state in zip(self.generators, checkpoint.generator_states):
            generator.set_state(state)
        torch.set_rng_state(checkpoint.global_rng_state)
        if checkpoint.cuda_rng_state is not None and device.type == "cuda":
            torch.cuda.set_rng_state(checkpoint.cuda_rng_state, device)
        self.restored = True

    def check_continues_at(self, step_index: int) -> None:
        """Called from the first step callback of the continued call: the
        iteration that ran must be the checkpoint's next one, with the states
        put back; anything else would not be the same image."""
        if not self.restored or step_index != self.checkpoint.step:
            raise CheckpointError(f"the render continued at iteration {step_index}, not {self.checkpoint.step}: "
                                  "this pipeline's loop does not skip iterations as expected")
        self.checked = True


def _execution_device(pipe) -> torch.device:
    device = getattr(pipe, "_execution_device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")
