"""CSV the farm writes, safe to open in a spreadsheet.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return is read as a formula by Excel, LibreOffice and Google Sheets, so a
prompt or a user name could run one on an admin's machine (CSV injection,
OWASP). Such text cells get a leading apostrophe, which spreadsheets show as
text and hide; numbers stay numbers.
"""

from __future__ import annotations

import csv
import logging
from typing import Any, Iterable, Mapping

logger = logging.getLogger(__name__)

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeDictWriter(csv.DictWriter):
    """``csv.DictWriter`` whose text cells can never start a formula."""

    def writerow(self, rowdict: Mapping[str, Any]):
        return super().writerow({key: neutralise(value) for key, value in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]):
        for row in rowdicts:
            self.writerow(row)
