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


def test_outputs_are_group_readable(tmp_path):
    """Atomic writes and checkpoint folders get the modes of a plain open()/mkdir (0644 /
    0755 under the usual umask 022), not mkstemp's 0600 / mkdtemp's 0700, which would
    hide results from the group on shared storage."""
    import os
    import stat

    from icae.utils import atomic_directory, atomic_write_json, atomic_write_text

    old = os.umask(0o027)  # a typical shared-storage umask: group may read
    try:
        f = atomic_write_text(tmp_path / "a" / "metrics.csv", "x\n")
        j = atomic_write_json(tmp_path / "summary.json", {"a": 1})
        with atomic_directory(tmp_path / "ckpt") as d:
            atomic_write_text(d / "checkpoint.json", "{}")
    finally:
        os.umask(old)
    for path in (f, j, tmp_path / "ckpt" / "checkpoint.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o750


@pytest.mark.parametrize("config", ["qwen3-8b.yaml", "mistral-7b.yaml"])
def test_readme_says_where_every_paper_data_source_comes_from(config):
    import yaml

    data = yaml.safe_load((REPO / "configs" / config).read_text())["data"]
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Data sources of the paper configs", 1)[1].split("\n## ", 1)[0]
    named = []
    for source in data["pretrain"]["sources"] + data["pretrain"]["eval_sources"]:
        named.append(source.get("hf_dataset") or source["path"])
    named.append(data["squad"].get("hf_dataset") or data["squad"]["train_file"])
    named.append(Path(data["repoqa"]["release_file"]).name)
    named += [Path(data["trajectories"][k]).as_posix() for k in ("train_file", "eval_file")]
    missing = [n for n in named if n not in section]
    assert not missing, f"README's data section does not explain {missing}"
