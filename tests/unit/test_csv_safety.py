"""Every CSV the farm writes neutralises cells a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
import io

from farm.api.users import usage_csv
from farm.csvsafe import neutralise
from farm.services.campaigns import MANIFEST_FIELDS, manifest_csv

HOSTILE = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


def test_formula_leading_text_gets_an_apostrophe_and_numbers_stay():
    for text in HOSTILE:
        assert neutralise(text) == "'" + text
    assert neutralise("a lighthouse at dawn") == "a lighthouse at dawn"
    assert neutralise(-3) == -3 and neutralise(-0.5) == -0.5 and neutralise(None) is None


def test_campaign_manifest_csv_is_neutralised():
    rows = [{field: None for field in MANIFEST_FIELDS} | {"prompt": text, "seed": -1} for text in HOSTILE]
    parsed = list(csv.DictReader(io.StringIO("".join(manifest_csv(iter(rows))))))
    assert [row["prompt"] for row in parsed] == ["'" + text for text in HOSTILE]
    assert {row["seed"] for row in parsed} == {"-1"}


def test_usage_csv_is_neutralised():
    response = usage_csv([{"user": text, "images": 3, "gpu_seconds": 1.5} for text in HOSTILE], ["user"])
    parsed = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [row["user"] for row in parsed] == ["'" + text for text in HOSTILE]
    assert all(row["images"] == "3" for row in parsed)
