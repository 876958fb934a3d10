"""Click parameter types the commands share: frame sizes, ranges, byte sizes."""

from __future__ import annotations

import re

import click


class SizeType(click.ParamType):
    """``HxW`` (for example ``128x224``) -> (H, W), both positive and even (4:2:0 video needs that)."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            h, w = (int(part) for part in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"{value!r} is not a size HxW (HEIGHTxWIDTH), e.g. 128x224", param, ctx)
        if h < 16 or w < 16 or h % 2 or w % 2:
            self.fail(f"{value!r}: height and width must be even and at least 16", param, ctx)
        return h, w


class RangeType(click.ParamType):
    """``MIN-MAX`` or ``N`` -> (MIN, MAX) with 1 <= MIN <= MAX (<= ``maximum`` when given)."""

    name = "MIN-MAX"

    def __init__(self, maximum: int | None = None, example: str = "4-48"):
        self.maximum, self.example = maximum, example

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(value))
        if not match:
            self.fail(f"{value!r} is not a count or a range like {self.example}", param, ctx)
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= lo <= hi or (self.maximum is not None and hi > self.maximum):
            bound = f" <= {self.maximum}" if self.maximum is not None else ""
            self.fail(f"{value!r}: need 1 <= MIN <= MAX{bound}", param, ctx)
        return lo, hi
