"""The create form, read into what the API takes: one job request, or a
campaign (base request, matrix, rows). Each list field of the form that holds
more than one value becomes a matrix dimension."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict

from farm.services.campaigns import MAX_CAMPAIGN_JOBS
from farm.services.campaigns import rows_format as campaign_rows_format
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

INT_FIELDS = ("steps", "width", "height", "num_images", "clip_skip", "priority")
FLOAT_FIELDS = ("guidance_scale", "detail_guidance", "sag_scale", "refiner_switch", "image_prompt_weight")
TEXT_FIELDS = ("negative_prompt", "variant", "preset", "performance", "sampler", "scheduler", "output_format",
               "refiner", "image_mode", "parent_output")
FLAGS = ("prompt_expansion", "freeu", "same_seed")


@dataclass
class Submission:
    base: dict[str, Any]
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    rows_text: str | None = None
    rows_format: str | None = None
    name: str = ""
    budget_images: int | None = None
    deadline: str | None = None  # ISO 8601 with a zone: the job's, or the campaign's

    @property
    def job_request(self) -> dict[str, Any]:
        """The one job's request: the base, with the deadline when one was given."""
        return {**self.base, "deadline": self.deadline} if self.deadline else self.base

    @property
    def is_campaign(self) -> bool:
        return bool(self.name or self.matrix or self.rows_text)

    def campaign_payload(self, dry_run: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {"name": self.name or "untitled campaign", "base": self.base, "matrix": self.matrix,
                                   "dry_run": dry_run}
        if self.budget_images is not None:
            payload["budget_images"] = self.budget_images
        if self.deadline:
            payload["deadline"] = self.deadline
        return payload


def _number(form: MultiDict, name: str, kind, problems: list[FieldProblem]):
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        problems.append(FieldProblem(name, f"{raw!r} is not {'a whole number' if kind is int else 'a number'}"))
        return None


def read_create_form(form: MultiDict, files: MultiDict) -> Submission:
    """The form as a job or campaign; RequestError (field -> message) for anything that is not a number where one is needed."""
    problems: list[FieldProblem] = []
    base: dict[str, Any] = {}
    matrix: dict[str, list[Any]] = {}
    for name in INT_FIELDS:
        value = _number(form, name, int, problems)
        if value is not None:
            base[name] = value
    for name in FLOAT_FIELDS:
        value = _number(form, name, float, problems)
        if value is not None:
            base[name] = value
    for name in TEXT_FIELDS:
        value = form.get(name, "").strip()
        if value:
            base[name] = value
    for name in FLAGS:
        if form.get(name):
            base[name] = True
    if base.get("image_mode") is None:
        base.pop("parent_output", None)
    image_prompt = form.get("image_prompt", "").strip()
    if image_prompt:
        base["image_prompts"] = [{"parent_output": image_prompt}]
    references = [ref.strip() for ref in form.getlist("reference") if ref.strip()]
    if references:
        base["references"] = [{"parent_output": ref} for ref in references]

    prompts = [line.strip() for line in form.get("prompt", "").splitlines() if line.strip()]
    if len(prompts) == 1:
        base["prompt"] = prompts[0]
    elif len(prompts) > 1:
        matrix["prompt"] = prompts
    models = [m for m in form.getlist("model") if m]
    if len(models) == 1:
        base["model"] = models[0]
    elif models:
        matrix["model"] = models
    ratios = [r for r in form.getlist("aspect_ratio") if r]
    if len(ratios) == 1:
        base["aspect_ratio"] = ratios[0]
    elif ratios:
        matrix["aspect_ratio"] = ratios
    styles = [s for s in form.getlist("styles") if s]
    if styles and form.get("styles_each") and len(styles) > 1:
        matrix["styles"] = [[s] for s in styles]
    elif styles:
        base["styles"] = styles

    seed = _number(form, "seed", int, problems)
    seed_count = _number(form, "seed_count", int, problems)
    if seed_count is not None and not 1 <= seed_count <= MAX_CAMPAIGN_JOBS:
        problems.append(FieldProblem("seed_count", f"give 1 to {MAX_CAMPAIGN_JOBS} seeds"))
    elif seed_count and seed_count > 1:
        # From a given seed: seed, seed + 1, ...; else the campaign draws them.
        matrix.update({"seed": [seed + i for i in range(seed_count)]} if seed is not None else {"seed_count": [seed_count]})
    elif seed is not None:
        base["seed"] = seed

    rows_text = rows_format = None
    upload = files.get("rows")
    if upload is not None and upload.filename:
        rows_format = campaign_rows_format(upload.filename)
        if rows_format is None:
            problems.append(FieldProblem("rows", "upload a .csv or .jsonl file"))
        else:
            try:
                rows_text = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                problems.append(FieldProblem("rows", "the file must be UTF-8 text"))
    if not prompts and rows_text is None:
        problems.append(FieldProblem("prompt", "write a prompt (one per line for several), or upload rows that have one"))
    budget = _number(form, "budget_images", int, problems)
    if problems:
        raise RequestError(problems)
    return Submission(base=base, matrix=matrix, rows_text=rows_text, rows_format=rows_format,
                      name=form.get("campaign_name", "").strip(), budget_images=budget,
                      deadline=form.get("deadline", "").strip() or None)


def prefill_from_request(request_: dict[str, Any]) -> dict[str, Any]:
    """Form values from a job's request (copy parameters into a new job)."""
    values = {k: v for k, v in request_.items() if k in INT_FIELDS + FLOAT_FIELDS + TEXT_FIELDS + FLAGS + ("prompt", "seed")}
    values["model"] = [request_["model"]] if request_.get("model") else []
    values["aspect_ratio"] = [request_["aspect_ratio"]] if request_.get("aspect_ratio") else []
    values["styles"] = list(request_.get("styles") or [])
    values.pop("image_mode", None)
    values.pop("parent_output", None)
    return values
