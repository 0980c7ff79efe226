"""Qwen-Image-Edit: Qwen-Image's transformer trained to edit a source image from an instruction.

The source goes in twice: through the VAE, as latent tokens appended to the
ones being denoised (its appearance), and through Qwen2.5-VL's vision tower
beside the instruction (its meaning). The farm serves the "Plus" pipeline
(``QwenImageEditPlusPipeline``), the one the current weights (Qwen-Image-Edit
2509 and later) are saved as: it takes one or several source images, each
named "Picture n" in the prompt, and conditions the vision tower at 384 x 384
per image rather than a megapixel. The first Qwen-Image-Edit release (saved
as ``QwenImageEditPipeline``, one image shown whole to the encoder) is a
different conditioning and is not detected as this family.

Edits only: the pipeline cannot render from text alone (it needs a source),
and it takes no strength, so the plain image-to-image modes are refused too.
Guidance is true classifier-free guidance, as for Qwen-Image.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from farm.families import qwen_image
from farm.families.loading import from_pretrained

logger = logging.getLogger(__name__)

PIPELINE_CLASS = "QwenImageEditPlusPipeline"


@functools.cache
def _image_only_processor_class():
    """Qwen2VLProcessor without its video half.

    transformers 5 requires every processor attribute, and Qwen2-VL's video
    processor needs torchvision; the edit pipelines never pass videos. On a
    worker without torchvision the processor is this subclass, which only
    declares the image processor and the tokenizer (everything it does with
    images and text is Qwen2VLProcessor's own code).
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageOnlyQwen2VLProcessor


def qwen_processor(image_processor, tokenizer):
    """The edit pipeline's processor over ``image_processor`` and ``tokenizer``."""
    from transformers import Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor())
    return _image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer)


def load(path: str, dtype, **extras):
    """The pipeline, with its processor built here from the folder's processor/
    files (see qwen_processor: transformers alone cannot load it without torchvision)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    images = AutoImageProcessor.from_pretrained(path, subfolder="processor")
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="processor")
    return from_pretrained(PIPELINE_CLASS, path, dtype, processor=qwen_processor(images, tokenizer), **extras)


def build_tiny(seed: int, variant: str | None = None):
    """Tiny Qwen-Image components, and a processor over the same tokenizer and
    Qwen2-VL's image processor (14-pixel patches merged 2 x 2)."""
    import diffusers
    from transformers import Qwen2VLImageProcessorPil

    components = qwen_image.tiny_components(seed)
    images = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                      min_pixels=56 * 56, max_pixels=448 * 448)
    pipe = getattr(diffusers, PIPELINE_CLASS)(**components, processor=qwen_processor(images, components["tokenizer"]))
    # Saved folders name the processor as published ones do, whichever class built it here.
    pipe.register_to_config(processor=("transformers", "Qwen2VLProcessor"))
    return pipe


# Qwen-Image's transformer, text encoder, VAE, samplers, guidance and weights
# (the edit transformer has the same shape); what differs:
FAMILY = dataclasses.replace(
    qwen_image.FAMILY,
    name="qwen_image_edit",
    title="Qwen-Image-Edit",
    pipeline_class=PIPELINE_CLASS,
    load=load,
    build_tiny=build_tiny,
    # The pipeline encodes the source at about a megapixel and, left alone,
    # renders there: an edit's output is capped at this side's area.
    native_side=1024,
    aspect_ratios=(),  # the size follows the source
    default_steps=40,
    step_s=2.4,  # Qwen-Image's two passes, each over the output's and the source's tokens
    working_gb_per_megapixel=6.4,  # Qwen-Image's, with the source's tokens beside the output's
    text_to_image=False,
    image_to_image=False,
    edits=True,
)
