"""Packaging facts that drift: requires-python against what the dependencies need."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _min_version(spec: str) -> tuple[int, ...]:
    m = re.search(r">=\s*(\d+(?:\.\d+)*)", spec or "")
    parts = [int(p) for p in m.group(1).split(".")] if m else [0]
    return tuple((parts + [0, 0, 0])[:3])


@pytest.mark.parametrize("dist", ["snakemake", "transformers"])
def test_requires_python_covers_the_dependencies(dist):
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    try:
        theirs = metadata.metadata(dist)["Requires-Python"]
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} not installed")
    assert _min_version(ours) >= _min_version(theirs), (dist, ours, theirs)
