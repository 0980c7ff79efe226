"""A campaign's X/Y grid: two of its axes as columns and rows, the others as pages.

A job's place in the expansion is a mixed-radix number over the campaign's axes
(farm.services.campaigns.position), so the cells of a page are computed, not
searched: one query fetches them by (campaign_id, campaign_index IN ...), the
same cost on a 100-job campaign as on a 100,000-job one. The contact sheet is
the same page drawn with Pillow from the stored images, labels included.
"""

from __future__ import annotations

import io
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from farm.models import Campaign, Job, Output
from farm.services.campaigns import Axis, campaign_axes, position
from farm.spec import FieldProblem, RequestError

logger = logging.getLogger(__name__)

MAX_SIDE = 64  # values per grid side; a longer axis goes on the pages
SHEET_MAX_PX = 4096  # the contact sheet's image area per side; cells shrink to fit
SHEET_CELL_PX = 256  # the dashboard's thumbnails are this size: they can fill a cell
LABEL_PX = 14
CELL_MIN_PX = 128


@dataclass
class GridCell:
    job_id: uuid.UUID
    status: str
    prompt: str
    output_id: uuid.UUID | None
    object_key: str | None
    side: int = 0  # the image's longer side in pixels


@dataclass
class Grid:
    axes: list[Axis]
    x: Axis
    y: Axis
    page: int  # 0-based index over the product of the other axes
    pages: int
    page_label: str
    x_labels: list[str]
    y_labels: list[str]
    rows: list[list[GridCell | None]] = field(default_factory=list)  # rows[y][x]; None: no such job

    @property
    def found(self) -> int:
        return sum(cell is not None for row in self.rows for cell in row)


def label(value: Any) -> str:
    """An axis value as people read it: style lists joined, objects as compact JSON."""
    if isinstance(value, list):
        return ", ".join(label(v) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return "none" if value is None else str(value)


def grid_axes(campaign: Campaign) -> list[Axis]:
    return campaign_axes(campaign.matrix, campaign.row_count)


def _refuse(problems: list[FieldProblem]) -> RequestError:
    return RequestError(problems, status=400)  # query parameters of a page, as core.int_arg answers


def choose_axes(axes: list[Axis], x: str | None, y: str | None) -> tuple[Axis, Axis]:
    """The x and y axes by name; by default the two longest that fit a side (ties: expansion order)."""
    by_name = {axis.name: axis for axis in axes}
    if len(axes) < 2:
        raise _refuse([FieldProblem("x", "a grid needs a campaign with two axes (matrix keys or rows); "
                                              f"this one has {len(axes)}")])
    problems = [FieldProblem(name, f"unknown axis {value!r}; use one of {', '.join(by_name)}")
                for name, value in (("x", x), ("y", y)) if value is not None and value not in by_name]
    if problems:
        raise _refuse(problems)
    # Longest first among those that fit a side (a 10,000-seed axis goes on the pages).
    varying = sorted(axes, key=lambda axis: (axis.size > MAX_SIDE, -axis.size))
    if x is None:
        x = next(a.name for a in varying if a.name != y)
    if y is None:
        y = next(a.name for a in varying if a.name != x)
    if x == y:
        raise _refuse([FieldProblem("y", f"pick an axis other than x ({x})")])
    for name, axis in (("x", by_name[x]), ("y", by_name[y])):
        if axis.size > MAX_SIDE:
            raise _refuse([FieldProblem(name, f"axis {axis.name} has {axis.size} values; a grid side holds at most "
                                                   f"{MAX_SIDE}: put it on the pages by picking two other axes")])
    return by_name[x], by_name[y]


def _page_picks(rest: list[Axis], page: int) -> dict[str, int]:
    picks = {}
    for axis in reversed(rest):
        page, picks[axis.name] = divmod(page, axis.size)
    return picks


def read_grid(session: Session, campaign: Campaign, x: str | None, y: str | None, page: int) -> Grid:
    """One page of the grid: a single query for its cells, whatever the campaign's size."""
    axes = grid_axes(campaign)
    x_axis, y_axis = choose_axes(axes, x, y)
    rest = [axis for axis in axes if axis.name not in (x_axis.name, y_axis.name)]
    pages = math.prod(axis.size for axis in rest)
    if not 0 <= page < pages:
        raise _refuse([FieldProblem("page", f"must be from 0 to {pages - 1}")])
    picks = _page_picks(rest, page)
    where_cell = {}
    for j in range(y_axis.size):
        for i in range(x_axis.size):
            where_cell[position(axes, {**picks, x_axis.name: i, y_axis.name: j})] = (j, i)
    query = (select(Job.id, Job.status, Job.params, Job.campaign_index, Job.campaign_axes, Job.width, Job.height,
                    Output.id.label("output_id"), Output.object_key)
             .outerjoin(Output, and_(Output.job_id == Job.id, Output.index == 0))
             .where(Job.campaign_id == campaign.id, Job.campaign_index.in_(list(where_cell))))
    rows: list[list[GridCell | None]] = [[None] * x_axis.size for _ in range(y_axis.size)]
    seen: dict[str, dict[int, Any]] = {x_axis.name: {}, y_axis.name: {}}
    page_values: dict[str, Any] = {}
    for row in session.execute(query):
        j, i = where_cell[row.campaign_index]
        rows[j][i] = GridCell(job_id=row.id, status=row.status, output_id=row.output_id, object_key=row.object_key,
                              side=max(row.width, row.height),
                              prompt=row.params.get("prompt") or "")
        values = row.campaign_axes or {}
        seen[x_axis.name].setdefault(i, values.get(x_axis.name))
        seen[y_axis.name].setdefault(j, values.get(y_axis.name))
        page_values.update({axis.name: values.get(axis.name) for axis in rest})

    def labels(axis: Axis) -> list[str]:
        if axis.name == "row":
            return [f"row {n}" for n in range(1, axis.size + 1)]
        if axis.values is not None:
            return [label(v) for v in axis.values]
        return [label(seen[axis.name].get(n, "?")) for n in range(axis.size)]  # drawn seeds: from the jobs

    def page_value(axis: Axis) -> str:
        if axis.name == "row":
            return str(picks["row"] + 1)
        return label(axis.values[picks[axis.name]] if axis.values is not None else page_values.get(axis.name, "?"))

    page_label = " · ".join(f"{axis.name} = {page_value(axis)}" for axis in rest)
    return Grid(axes=axes, x=x_axis, y=y_axis, page=page, pages=pages, page_label=page_label,
                x_labels=labels(x_axis), y_labels=labels(y_axis), rows=rows)


def _fit(draw, text: str, font, width: int) -> str:
    """text cut with an ellipsis to fit width pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def contact_sheet(grid: Grid, campaign_name: str, read_image: Callable[[str], bytes | None]) -> bytes:
    """The grid page as one PNG: a title line, column labels on top, row labels
    on the left, each image scaled into its cell (empty cells stay blank).
    read_image(object_key) gives an image's bytes, or None when it is missing."""
    from PIL import Image, ImageDraw, ImageFont

    columns, rows = grid.x.size, grid.y.size
    largest = max((found.side for row in grid.rows for found in row if found is not None), default=SHEET_CELL_PX)
    # Images are never scaled up: small renders make a smaller sheet, down to cells wide
    # enough for a label (CELL_MIN_PX) unless SHEET_MAX_PX needs them narrower still.
    cell = max(16, min(SHEET_CELL_PX, SHEET_MAX_PX // max(columns, rows), max(largest + 2, CELL_MIN_PX)))
    font = ImageFont.load_default(size=LABEL_PX)
    line = LABEL_PX + 8
    left, top, pad = 180, 2 * line + 4, 4
    sheet = Image.new("RGB", (left + columns * cell + pad, top + rows * cell + pad), "white")
    draw = ImageDraw.Draw(sheet)
    title = f"{campaign_name} · x: {grid.x.name} · y: {grid.y.name}" + (f" · {grid.page_label}" if grid.page_label else "")
    draw.text((pad, pad), _fit(draw, title, font, sheet.width - 2 * pad), fill="black", font=font)
    for i, text in enumerate(grid.x_labels):
        draw.text((left + i * cell + 2, line + 4), _fit(draw, text, font, cell - 4), fill="black", font=font)
    for j, text in enumerate(grid.y_labels):
        draw.text((pad, top + j * cell + 2), _fit(draw, text, font, left - 2 * pad), fill="black", font=font)
        for i, found in enumerate(grid.rows[j]):
            box = (left + i * cell, top + j * cell)
            draw.rectangle((box[0], box[1], box[0] + cell - 1, box[1] + cell - 1), outline="#cccccc")
            data = read_image(found.object_key) if found is not None and found.object_key else None
            if data is None:
                continue
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("RGB")
                image.thumbnail((cell - 2, cell - 2))
                sheet.paste(image, (box[0] + (cell - image.width) // 2, box[1] + (cell - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
