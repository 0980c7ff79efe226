"""Loading a model family's pipeline, and the render call.

What differs between families (pipeline classes, samplers, extras, the
negative prompt, the IP-Adapter layout) is declared in ``farm/families``;
this module loads through the family's ``load``, builds a fresh scheduler
for every job, and runs the pipeline with per-image seeded generators so that
the same parameters always give the same pixels on the same machine.

A pipeline object must not be used by two renders at once: ``render`` swaps
the job's scheduler in for the length of the call.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import PIL.Image
import torch
from PIL import ExifTags
from PIL.PngImagePlugin import PngInfo

from farm.families import (available_samplers, build_scheduler, check_extras, check_image_mode, check_sampler,
                           find_family, get_family, pipeline_family, renderer_names, sampler_resumable)
from farm.families.samplers import SIGMA_SCHEDULES
from farm.workers.resume import CheckpointError, RenderPreempted, ResumeHooks, StepCheckpoint, capture

logger = logging.getLogger(__name__)

#: Families that render on their own (a refiner family only finishes renders of one of them).
FAMILIES = renderer_names()

IMAGE_FORMATS = ("png", "jpeg", "webp")

_SEED_MOD = 2**64

# dpmpp_sde: diffusers hands torchsde float32 sigmas, and torchsde warns on
# every job that the first one is "above" its float64 interval end (or, when
# a refiner starts midway, "below" its start) by a rounding error. Harmless;
# silence just those messages.
warnings.filterwarnings("ignore", message=r"Should have t[ab](<=t1|>=t0) but got", category=UserWarning)


class RenderCanceled(Exception):
    """Raised from an ``on_step`` callback to stop a render at that step."""


#: Above this many pixels the VAE decodes in tiles (diffusers' enable_tiling).
LARGE_IMAGE_PIXELS = 2_097_152


@dataclass(frozen=True)
class RenderParams:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    scheduler: str  # the sigma schedule: one of SIGMA_SCHEDULES
    seed: int
    num_images: int = 1
    same_seed: bool = False
    clip_skip: int | None = None  # 1 = the last layer (no skip)
    freeu: bool = False
    detail_guidance: float | None = None  # perturbed-attention guidance scale; None or 0 = off
    sag_scale: float | None = None  # self-attention guidance scale; None or 0 = off
    # LoRAs as the job's params hold them: {"name", "weight", "sha256", "source", "file"}.
    loras: tuple = ()
    image_prompts: "ImagePrompts | None" = None
    refiner: "Refiner | None" = None
    # Reference images the model conditions on (PIL, RGB), for families that
    # take them (Family.max_references): the pipeline's ``image=[...]``.
    references: tuple = ()


@dataclass(frozen=True)
class Refiner:
    """An SDXL refiner finishing a text-to-image render: the base denoises the
    first ``switch`` fraction of the schedule and hands its latents over."""

    pipe: Any  # a loaded sdxl_refiner pipeline
    switch: float  # 0 < switch < 1


@dataclass(frozen=True)
class ImagePrompts:
    """Reference images for the family's IP-Adapter (a folder with one
    .safetensors adapter file and an image_encoder/ folder), at one weight."""

    adapter: str
    weight: float
    images: tuple  # PIL images


# --------------------------------------------------------------------------- device


def pick_device(setting: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; otherwise the named device."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ValueError(f"device {setting!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {setting!r} was asked for but CUDA is not available on this machine")
    return device


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def pick_dtype(device: torch.device, requested: str | None = None, family: str = "sd") -> torch.dtype:
    """float32 on the CPU always; elsewhere ``requested`` ("fp16", "bf16", "fp32").

    Unset: the family's own (bf16 for FLUX and SD3, whose activations
    overflow fp16) where the GPU has it, fp16 otherwise.
    """
    if requested is not None and requested.lower() not in _DTYPES:
        raise ValueError(f"dtype {requested!r} is not known; choose one of fp16, bf16, fp32")
    if device.type == "cpu":
        if requested is not None and _DTYPES[requested.lower()] != torch.float32:
            logger.info("dtype %s ignored on the CPU; using fp32", requested)
        return torch.float32
    if requested is None:
        found = find_family(family)
        requested = found.default_dtype if found is not None else "fp16"
    dtype = _DTYPES[requested.lower()]
    if (
        dtype == torch.bfloat16
        and device.type == "cuda"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        logger.warning("bf16 is not supported on %s; using fp16", device)
        return torch.float16
    return dtype


# --------------------------------------------------------------------------- pipelines


@contextlib.contextmanager
def quiet_progress_bars():
    """Turn diffusers' and transformers' tqdm bars off for a load or save (process-wide)."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as tf_logging

    was_on = [(lib, lib.is_progress_bar_enabled()) for lib in (df_logging, tf_logging)]
    for lib, _ in was_on:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in was_on:
            if on:
                lib.enable_progress_bar()


def load_pipeline(path: str | os.PathLike, family: str, device: torch.device, dtype: torch.dtype,
                  quantization: dict | None = None):
    """Load a diffusers model directory (or hub id) of ``family`` onto ``device``;
    ``quantization``: a quantized variant's record (farm/quantization.py)."""
    from farm.workers.quantize import check_device, load_extras

    check_device(quantization, device.type)  # before reading gigabytes: nf4 on a CPU fails here, saying why
    loader = get_family(family).load
    with quiet_progress_bars():
        pipe = loader(os.fspath(path), dtype, **load_extras(Path(path), quantization, dtype))
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s pipeline from %s on %s as %s", family, path, device, dtype)
    return pipe


def _torch_modules(pipe) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a quantized tensor subclass (torchao) counts its inner
    tensors (int8 data and scales), not its logical dtype times its shape."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def estimate_vram_gb(pipe) -> float:
    """Bytes of all parameters and buffers of the pipeline's torch modules, in GiB (2**30).

    Weights only: activations, the VAE decode and the CUDA context come on top.
    Quantized weights count at their packed size.
    """
    seen: set[int] = set()
    total = 0
    for module in _torch_modules(pipe):
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            total += _tensor_bytes(tensor)
    return total / 2**30


# --------------------------------------------------------------------------- render


def _image_seeds(params: RenderParams) -> list[int]:
    if params.same_seed:
        return [params.seed % _SEED_MOD] * params.num_images
    return [(params.seed + i) % _SEED_MOD for i in range(params.num_images)]


@dataclass(frozen=True)
class ImageInputs:
    """What an image-to-image call adds to a render: the source (already at the
    output size), the denoising strength, and for inpainting the mask (white =
    repaint). An edit (``edit``) gives the source to an editing family's
    pipeline as it is, with the prompt as the instruction; no strength."""

    image: PIL.Image.Image
    strength: float
    mask: PIL.Image.Image | None = None
    edit: bool = False

    @property
    def kind(self) -> str:
        if self.edit:
            return "edit"
        return "inpaint" if self.mask is not None else "img2img"


def derived_pipeline(pipe, kind: str, pag: bool = False):
    """The image-to-image, inpainting, perturbed-attention or self-attention-guidance pipeline of a loaded text-to-image one.

    ``kind`` is "text2img", "img2img", "inpaint", "sag" (the family's
    ``sag_pipeline_class``) or "edit" (an editing family's loaded pipeline is
    its editing pipeline: the pipeline itself). ``from_pipe`` shares every
    component (no extra weights in memory); the result is kept on the
    pipeline object, so a worker builds each once.
    """
    import diffusers
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    if kind in ("text2img", "edit") and not pag:
        return pipe
    cache = pipe.__dict__.setdefault("_farm_derived", {})
    if (kind, pag) not in cache:
        if kind == "sag":
            class_name = get_family(pipeline_family(pipe)).sag_pipeline_class
            if class_name is None:
                raise ValueError(f"{type(pipe).__name__} has no self-attention guidance pipeline")
            derived = getattr(diffusers, class_name).from_pipe(pipe)
            derived.set_progress_bar_config(disable=True)
            cache[(kind, pag)] = derived
            return derived
        auto = {"text2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[kind]
        derived = auto.from_pipe(pipe, enable_pag=True) if pag else auto.from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        cache[(kind, pag)] = derived
    return cache[(kind, pag)]


def _alias_clip_text_model(text_encoder) -> None:
    """SD's clip-skip path in diffusers 0.42 reads ``text_encoder.text_model.final_layer_norm``;
    transformers 5 flattened CLIPTextModel (its final_layer_norm is on the model
    itself). Point ``text_model`` at the model, outside the module tree (a plain
    attribute, not a submodule, so parameters are not listed twice)."""
    if text_encoder is None or hasattr(text_encoder, "text_model") or not hasattr(text_encoder, "final_layer_norm"):
        return
    object.__setattr__(text_encoder, "text_model", text_encoder)


class LoraIntegrityError(Exception):
    """A LoRA file's sha256 differs from the one the registry recorded."""


def apply_loras(pipe, loras) -> None:
    """Load each of the job's LoRAs once per pipeline and activate them with their weights.

    Adapters stay loaded (keyed by sha256) for later jobs; a job without LoRAs
    turns them all off, so it renders exactly as the bare model.
    """
    from farm.loras import file_sha256

    loaded: dict[str, str] = pipe.__dict__.setdefault("_farm_loras", {})
    if not loras:
        if loaded:
            pipe.disable_lora()
        return
    names = []
    for lora in loras:
        name = loaded.get(lora["sha256"])
        if name is None:
            path = os.path.join(lora["source"], lora["file"])
            actual = file_sha256(path)
            if actual != lora["sha256"]:
                raise LoraIntegrityError(f"LoRA {lora['name']} at {path} has sha256 {actual}, not the registered {lora['sha256']}")
            name = f"lora_{len(loaded)}"
            pipe.load_lora_weights(lora["source"], weight_name=lora["file"], adapter_name=name)
            loaded[lora["sha256"]] = name
            logger.info("loaded LoRA %s as adapter %s", lora["name"], name)
        names.append(name)
    pipe.enable_lora()
    pipe.set_adapters(names, [float(lora["weight"]) for lora in loras])


def _use_ip_adapter(pipe, target, prompts: ImagePrompts | None) -> None:
    """Have the job's IP-Adapter loaded into ``target`` at its weight, or none at all.

    An adapter stays loaded across images, tiles and jobs that use it; a
    render without image prompts unloads it, so it runs as the bare model.
    The record lives on the base pipeline, whose UNet every derived pipeline
    shares: an adapter loaded through an img2img pipeline is unloaded before
    a plain text-to-image render too.
    """
    loaded = pipe.__dict__.get("_farm_ip_adapter")  # (pipeline it was loaded into, folder)
    wanted = (target, prompts.adapter) if prompts is not None else None
    if loaded is not None and (wanted is None or loaded[0] is not wanted[0] or loaded[1] != wanted[1]):
        loaded[0].unload_ip_adapter()
        pipe.__dict__["_farm_ip_adapter"] = loaded = None
    if prompts is None:
        return
    if loaded is None:
        folder = prompts.adapter
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if len(files) != 1:
            raise ValueError(f"IP-Adapter folder {folder} must hold exactly one .safetensors file; found {len(files)}")
        if not hasattr(target, "load_ip_adapter"):
            raise ValueError(f"{type(target).__name__} takes no image prompts")
        if get_family(pipeline_family(pipe)).ip_adapter_layout == "xlabs":
            # FLUX's loader (XLabs layout) names the encoder folder by path and
            # defaults it to fp16; keep it in the pipeline's dtype.
            target.load_ip_adapter(folder, subfolder="", weight_name=files[0],
                                   image_encoder_pretrained_model_name_or_path=os.path.join(folder, "image_encoder"),
                                   image_encoder_dtype=target.transformer.dtype)
        else:
            target.load_ip_adapter(folder, subfolder="", weight_name=files[0], image_encoder_folder="image_encoder")
        pipe.__dict__["_farm_ip_adapter"] = wanted
    target.set_ip_adapter_scale(float(prompts.weight))


def _call_parameters(target) -> set[str]:
    return set(inspect.signature(target.__call__).parameters)


def render(
    pipe,
    params: RenderParams,
    on_step: Callable[[int, int], None] | None = None,
    inputs: ImageInputs | None = None,
    on_latents: Callable[[Any], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    resume: StepCheckpoint | None = None,
) -> list[PIL.Image.Image]:
    """Render ``params.num_images`` images with ``pipe``.

    Image i uses a CPU generator seeded with ``seed + i`` (or ``seed`` for all
    with ``same_seed``), so image i is the same whatever ``num_images`` is.

    ``on_step(done, total)`` is called after every denoising iteration;
    ``total`` is the number of iterations the sampler runs, which is
    ``steps`` for first-order samplers and ``2 * steps - 1`` for the second
    order ones (heun, dpmpp_sde). Raising RenderCanceled from it stops the
    render there; the exception propagates to the caller. ``on_latents``
    is then given the iteration's latents (as the pipeline holds them; FLUX's
    are packed) for live previews.

    Preemption (farm/workers/resume.py): where the render can be continued
    exactly (``resumable``), ``stop_requested()`` is asked after every
    iteration but the last; when it says yes the render stops there and
    raises RenderPreempted with the checkpoint. ``resume`` continues such a
    checkpoint: the same parameters then give the same image as a render
    that never stopped.
    """
    if params.num_images < 1:
        raise ValueError("num_images must be at least 1")
    if params.steps < 1:
        raise ValueError("steps must be at least 1")
    family = pipeline_family(pipe)
    declared = get_family(family)
    problem = check_sampler(family, params.sampler, params.scheduler)
    if problem:
        raise ValueError(problem)
    problems = check_extras(family, clip_skip=params.clip_skip, freeu=params.freeu,
                            detail_guidance=params.detail_guidance, inpainting=inputs is not None and inputs.mask is not None,
                            sag_scale=params.sag_scale, sampler=params.sampler, image_input=inputs is not None,
                            image_prompts=params.image_prompts is not None)
    if problems:
        raise ValueError("; ".join(why for _, why in problems))
    problem = check_image_mode(family, None if inputs is None else "edit" if inputs.edit else inputs.kind)
    if problem:
        raise ValueError(problem)

    apply_loras(pipe, params.loras)
    seeds = _image_seeds(params)
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    # Image-to-image work runs the derived pipeline; its scheduler is swapped
    # like the base one's (from_pipe gave it the same scheduler object).
    detail = bool(params.detail_guidance)
    sag = bool(params.sag_scale)
    target = derived_pipeline(pipe, "sag" if sag else "text2img" if inputs is None else inputs.kind, pag=detail)
    original = target.scheduler
    scheduler = build_scheduler(original.config, params.sampler, params.scheduler, noise_seed=seeds, family=family)

    refiner = params.refiner
    if refiner is not None and (not declared.takes("refiner") or inputs is not None):
        raise ValueError("a refiner finishes SDXL text-to-image renders only")
    if refiner is not None and not 0 < refiner.switch < 1:
        raise ValueError("the refiner switch must lie strictly between 0 and 1")
    if params.references and (inputs is not None or len(params.references) > declared.max_references):
        raise ValueError(f"{family} models take at most {declared.max_references} reference images, in text-to-image renders")

    def callback_for(start: float, share: float):
        """Progress of one phase (the base, or the refiner) as a part of the whole render."""
        if on_step is None and on_latents is None:
            return None

        def callback(p, step_index: int, timestep, callback_kwargs: dict) -> dict:
            total = int(getattr(p, "num_timesteps", None) or len(p.scheduler.timesteps))
            if on_step is None:
                pass
            elif share == 1.0:
                on_step(step_index + 1, total)
            else:
                # In base steps: the refiner's iterations count as the rest of the schedule.
                done = (start + share * (step_index + 1) / total) * params.steps
                on_step(min(params.steps, max(1, round(done))), params.steps)
            if on_latents is not None and callback_kwargs.get("latents") is not None:
                on_latents(callback_kwargs["latents"])
            return callback_kwargs

        return callback

    can_stop = resumable(params, inputs, family)
    if resume is not None and not can_stop:
        raise CheckpointError(f"a {family} render with sampler {params.sampler!r} cannot continue from a checkpoint")
    hooks = ResumeHooks(target, resume, generators) if resume is not None else None
    progress = callback_for(0.0, refiner.switch if refiner is not None else 1.0)
    callback = progress
    if hooks is not None or (can_stop and stop_requested is not None):

        def callback(p, step_index: int, timestep, callback_kwargs: dict) -> dict:
            if hooks is not None and not hooks.checked:
                hooks.check_continues_at(step_index)
            if progress is not None:
                callback_kwargs = progress(p, step_index, timestep, callback_kwargs)
            total = len(p.scheduler.timesteps)
            if can_stop and stop_requested is not None and step_index + 1 < total and stop_requested():
                raise RenderPreempted(capture(p, step_index + 1, total, callback_kwargs["latents"], generators))
            return callback_kwargs

    call_kwargs: dict[str, Any] = dict(
        prompt=params.prompt,
        width=params.width,
        height=params.height,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        num_images_per_prompt=params.num_images,
        generator=generators,
        output_type="pil" if refiner is None else "latent",
        callback_on_step_end=callback,
    )
    # The family's own arguments (a negative prompt, true CFG's scale, ...) add to these or replace them.
    call_kwargs.update(declared.render_kwargs(params.negative_prompt, params.guidance_scale, params.width, params.height))
    if refiner is not None:
        call_kwargs["denoising_end"] = refiner.switch
    if params.references:
        call_kwargs["image"] = list(params.references)
    if inputs is not None:
        call_kwargs["image"] = inputs.image
        if not inputs.edit:
            call_kwargs["strength"] = inputs.strength
        if inputs.mask is not None:
            call_kwargs["mask_image"] = inputs.mask
        # SD's img2img pipeline takes its size from the image.
        accepted = _call_parameters(target)
        call_kwargs = {k: v for k, v in call_kwargs.items() if k in accepted}
    if params.clip_skip is not None and params.clip_skip > 1:
        # diffusers counts the layers skipped: clip_skip=1 there is our 2.
        call_kwargs["clip_skip"] = params.clip_skip - 1
        _alias_clip_text_model(getattr(target, "text_encoder", None))
    if detail:
        call_kwargs["pag_scale"] = float(params.detail_guidance)
    if sag:
        call_kwargs["sag_scale"] = float(params.sag_scale)
        # The SAG pipeline predates callback_on_step_end: it calls
        # callback(step, timestep, latents) after each step instead.
        step_end = call_kwargs.pop("callback_on_step_end")
        if step_end is not None:
            call_kwargs["callback"] = lambda step, timestep, latents: step_end(target, step, timestep, {"latents": latents})
        # It swaps a processor into the shared UNet and puts the originals
        # back only when the call returns: restore them on a cancel too.
        attention = target.unet.attn_processors
    _use_ip_adapter(pipe, target, params.image_prompts)
    if params.image_prompts is not None:
        # One adapter, several images: their embeddings are stacked (a list per adapter).
        call_kwargs["ip_adapter_image"] = [list(params.image_prompts.images)]
    if params.freeu:
        # FreeU changes the shared UNet in place: on for this call only.
        target.enable_freeu(**declared.freeu)
    # Large images decode tile by tile, so the VAE's activations (which grow
    # with the pixel count) stay bounded up to 4 megapixels.
    tiled_vae = params.width * params.height > LARGE_IMAGE_PIXELS and hasattr(getattr(target, "vae", None), "enable_tiling")
    if tiled_vae:
        target.vae.enable_tiling()
    target.scheduler = scheduler
    try:
        # FLUX's and SD3's pipelines call scheduler.step without the
        # generators, so the stochastic flow samplers (euler_ancestral, lcm)
        # draw from torch's global generator: seed it for the call, and put
        # it back afterwards.
        with torch.random.fork_rng(devices=[]), torch.inference_mode(), hooks or contextlib.nullcontext():
            torch.manual_seed(seeds[0])
            result = target(**call_kwargs)
    finally:
        target.scheduler = original
        if sag:
            target.unet.set_attn_processor(attention)
        if params.freeu:
            target.disable_freeu()
        if tiled_vae:
            target.vae.disable_tiling()
    if refiner is not None:
        return _refine(refiner, params, result.images, generators, seeds, callback_for(refiner.switch, 1 - refiner.switch))
    return list(result.images)


def resumable(params: RenderParams, inputs: "ImageInputs | None", family: str) -> bool:
    """Whether this render may stop at a step boundary and continue later to
    the same bytes: a one-pipeline text-to-image render (no refiner, no
    image-to-image inputs) with a resumable sampler."""
    return inputs is None and params.refiner is None and params.num_images == 1 and sampler_resumable(family, params.sampler)


def _refine(refiner: Refiner, params: RenderParams, latents, generators, seeds, callback) -> list[PIL.Image.Image]:
    """The refiner's part of a render: the same prompt and sampler from the
    base's switch point to the end, on the base's latents (no noise added)."""
    pipe = refiner.pipe
    original = pipe.scheduler
    pipe.scheduler = build_scheduler(original.config, params.sampler, params.scheduler, noise_seed=seeds,
                                     family=pipeline_family(pipe))
    tiled_vae = params.width * params.height > LARGE_IMAGE_PIXELS
    if tiled_vae:
        pipe.vae.enable_tiling()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seeds[0])
            result = pipe(
                prompt=params.prompt, negative_prompt=params.negative_prompt or None, image=latents,
                num_inference_steps=params.steps, denoising_start=refiner.switch, guidance_scale=params.guidance_scale,
                num_images_per_prompt=1, generator=generators, output_type="pil", callback_on_step_end=callback,
            )
    finally:
        pipe.scheduler = original
        if tiled_vae:
            pipe.vae.disable_tiling()
    return list(result.images)


# --------------------------------------------------------------------------- encoding

_EXIF_ASCII = b"ASCII\x00\x00\x00"  # UserComment's 8-byte character code prefix


def _exif_with_text(text: Mapping[str, str]) -> PIL.Image.Exif:
    exif = PIL.Image.Exif()
    payload = json.dumps(dict(text), ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = _EXIF_ASCII + payload.encode("ascii")
    return exif


def encode_image(image: PIL.Image.Image, fmt: str, text: dict[str, str]) -> bytes:
    """Encode ``image`` as png, jpeg or webp with ``text`` embedded; deterministic.

    PNG: one text chunk per key (tEXt, or iTXt where the value is not latin-1).
    JPEG / WebP: the whole mapping as a JSON object (ASCII, sorted keys) in the
    EXIF UserComment. ``read_image_text`` reads either back.
    """
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt!r} is not supported; choose one of {', '.join(IMAGE_FORMATS)}")
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("text keys and values must be str")
    buf = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        for key in sorted(text):
            try:
                key.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"PNG text key {key!r} must be latin-1") from None
            if not 1 <= len(key) <= 79:
                raise ValueError(f"PNG text key {key!r} must be 1 to 79 characters")
            info.add_text(key, text[key])
        image.save(buf, format="PNG", pnginfo=info, compress_level=6, optimize=False)
    elif fmt == "jpeg":
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buf, format="JPEG", quality=95, optimize=False, progressive=False, exif=_exif_with_text(text))
    else:
        image.save(buf, format="WEBP", quality=90, method=4, lossless=False, exif=_exif_with_text(text))
    return buf.getvalue()


def read_image_text(data: bytes) -> dict[str, str]:
    """The text ``encode_image`` embedded in ``data`` (empty if there is none)."""
    with PIL.Image.open(io.BytesIO(data)) as im:
        if im.format == "PNG":
            return dict(getattr(im, "text", {}) or {})
        raw = im.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not raw:
        return {}
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if raw.startswith(_EXIF_ASCII):
        raw = raw[len(_EXIF_ASCII) :]
    try:
        value = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


__all__ = [
    "FAMILIES",
    "IMAGE_FORMATS",
    "ImageInputs",
    "ImagePrompts",
    "LoraIntegrityError",
    "SIGMA_SCHEDULES",
    "Refiner",
    "RenderCanceled",
    "RenderParams",
    "RenderPreempted",
    "StepCheckpoint",
    "apply_loras",
    "available_samplers",
    "build_scheduler",
    "check_extras",
    "check_sampler",
    "derived_pipeline",
    "encode_image",
    "estimate_vram_gb",
    "load_pipeline",
    "pick_device",
    "pick_dtype",
    "pipeline_family",
    "quiet_progress_bars",
    "read_image_text",
    "render",
]
