"""Describe: an image to a prompt, through an image-to-text model loaded with transformers.

Any model transformers loads as ``AutoModelForImageTextToText`` with its
``AutoProcessor`` (BLIP, GIT, VisionEncoderDecoder captioners, Florence-2,
the chat VLMs) is driven the same way: the processor turns the image (and,
for models that take one, a task prompt) into tensors, ``generate`` decodes
greedily, the processor turns the tokens back into text. Greedy decoding
makes the text a function of the image and the weights, so the same image
gets the same prompt. transformers 5 dropped the "image-to-text" pipeline,
and its "image-text-to-text" pipeline insists on a text input, which plain
captioners do not take; the processor-and-generate path serves both.

The worker that has ``FARM_WORKER_DESCRIBE_MODEL`` set loads the model on its
first describe request and keeps it (a captioner is small beside a diffusion
model). ``write_tiny_describer`` builds a random-weight BLIP captioner with a
local tokenizer for tests and the offline demo: its text is gibberish, but
it runs the real path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image

logger = logging.getLogger(__name__)

#: Longest description, in tokens; prompts past CLIP's 77 tokens are cut anyway.
MAX_NEW_TOKENS = 60


@dataclass
class Describer:
    """A loaded image-to-text model: its name (the folder's) and the processor, model and task prompt."""

    name: str
    processor: Any
    model: Any
    prompt: str | None = None


def load_describer(folder: str | os.PathLike, device, prompt: str | None = None) -> Describer:
    """The image-to-text model in ``folder`` on ``device`` (fp32 on the CPU, fp16 elsewhere)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from farm.workers.pipelines import quiet_progress_bars

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"describe model folder {path} has no config.json; FARM_WORKER_DESCRIBE_MODEL must name a "
                         "local transformers image-to-text model folder")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    with quiet_progress_bars():
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    model.to(device).eval()
    logger.info("loaded describe model %s (%s) on %s", path.name, type(model).__name__, device)
    return Describer(name=path.name, processor=processor, model=model, prompt=prompt)


def describe_image(describer: Describer, image: PIL.Image.Image) -> str:
    """A prompt for ``image``: greedy decoding, special tokens and the task prompt left out."""
    import torch

    model = describer.model
    inputs = describer.processor(images=image.convert("RGB"), text=describer.prompt, return_tensors="pt")
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
    text = describer.processor.batch_decode(tokens, skip_special_tokens=True)[0]
    if describer.prompt and text.startswith(describer.prompt):
        text = text[len(describer.prompt):]  # decoder-only models repeat their input
    return " ".join(text.split())


# Words of the tiny model's vocabulary: BERT's special tokens (BLIP's text
# decoder starts from [DEC]) and a handful of prompt words.
_TINY_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "an", "the", "of", "on", "in", "with",
               "photo", "painting", "cat", "dog", "house", "tree", "sky", "red", "blue", "green", "small", "old",
               "street", "river", "mountain", "portrait", "light", "night", "city", "field", "flower", "boat")


def write_tiny_describer(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a random-weight BLIP captioner (32-pixel images, a 35-word vocabulary) to ``folder``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from farm.workers.pipelines import quiet_progress_bars

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(_TINY_WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = BlipConfig(
        vision_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, vocab_size=len(_TINY_WORDS), max_position_embeddings=96,
                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    with quiet_progress_bars():
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return path


__all__ = ["MAX_NEW_TOKENS", "Describer", "describe_image", "load_describer", "write_tiny_describer"]
