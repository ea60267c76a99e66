"""Text templates shipped with the package; ``@NAME@`` placeholders are filled in verbatim."""
from __future__ import annotations

import os
import re
from typing import Mapping

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def fill(name: str, values: Mapping[str, str]) -> str:
    """Template ``name`` with every ``@KEY@`` replaced by ``values[KEY]`` (all keys must be given)."""
    with open(os.path.join(TEMPLATE_DIR, name), encoding="utf-8") as handle:
        text = handle.read()
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
