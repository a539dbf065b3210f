import json
import shutil
from pathlib import Path

import pytest

from icae.data.io import DataError, SkipLog, write_jsonl
from icae.data.repoqa import RECORD_FIELDS, description_key, load_release, topological_sort
from icae.data.repoqa_tree import build_tasks_from_tree, needle_candidates, scan_tree
from icae.data.tokens import encode

FIX = Path(__file__).resolve().parent / "fixtures" / "data" / "repoqa"
REPO = Path(__file__).resolve().parents[1]
RELEASE = FIX / "mini-release.json"
PKG = FIX / "minipkg"


def _norm(s):
    return " ".join(s.split())


def test_topological_sort_matches_repoqa():
    graph = {"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}
    assert topological_sort(graph) == ["c", "b", "a", "d"]


def test_release_tasks(tiny_tok):
    tasks = load_release(RELEASE, tiny_tok, context_tokens=300)
    assert [t["needle_name"] for t in tasks] == ["count_vowels", "centroid", "clamp", "mul"]
    py = [t for t in tasks if t["language"] == "python"]
    assert [t["position_ratio"] for t in py] == [0.5 / 3, 1.5 / 3, 2.5 / 3]  # (i + 0.5) / n
    for t in tasks:
        assert set(RECORD_FIELDS) <= set(t)
        assert t["context"].count(t["needle_code"]) == 1
        assert t["needle_code"].startswith(("def ", "pub fn "))
        assert t["context_tokens"] == len(encode(tiny_tok, t["context"]))
        assert t["context_tokens"] <= 1.1 * 300  # RepoQA counts line by line: approximate
        assert t["id"] == f"{t['language']}::{t['repo']}::{t['needle_name']}"
        assert t["description"].startswith("1. **Purpose**")
        # every needle of the task's repository, for RepoQA's best-match criterion
        same_repo = {u["needle_name"]: u["needle_code"] for u in tasks
                     if (u["language"], u["repo"]) == (t["language"], t["repo"])}
        assert t["repo_needles"] == same_repo
    # the needle after a non-ASCII character is cut at the right (byte) offsets
    cv = tasks[0]
    assert cv["needle_code"].startswith("def count_vowels(text):")
    assert cv["needle_code"].endswith("return n")
    big = load_release(RELEASE, tiny_tok, context_tokens=3000, languages=["python"])
    assert "# Path: geo/geometry.py\n" in big[1]["context"]  # centroid's whole file fits
    rust = tasks[-1]
    assert "// Path: src/lib.rs" in rust["context"] and rust["repo"] == "example/arith"


def test_release_language_filter_and_errors(tiny_tok, tmp_path):
    assert {t["language"] for t in load_release(RELEASE, tiny_tok, context_tokens=200,
                                                languages=["rust"])} == {"rust"}
    with pytest.raises(DataError, match=r"no language\(s\) \['go'\]"):
        load_release(RELEASE, tiny_tok, languages=["go"])
    data = json.loads(RELEASE.read_text())
    del data["python"][0]["needles"][1]["description"]
    bad = tmp_path / "release.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"python\[0\]\.needles\[1\]: needle lacks "
                                         r"\['description'\]"):
        load_release(bad, tiny_tok)
    skips = SkipLog()
    assert len(load_release(bad, tiny_tok, skip_bad_lines=True, skips=skips)) == 3
    assert skips.counts == {"bad_needle": 1}
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="not a RepoQA release file"):
        load_release(bad, tiny_tok)


def test_task_jsonl_round_trip(tiny_tok, tmp_path):
    tasks = load_release(RELEASE, tiny_tok, context_tokens=200)
    path = tmp_path / "tasks.jsonl.gz"
    write_jsonl(path, tasks)
    assert load_release(path) == tasks  # no tokenizer needed for prepared tasks
    lines = path.parent / "bad.jsonl"
    rows = [dict(tasks[0]), dict(tasks[1])]
    del rows[1]["needle_code"]
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'needle_code'"):
        load_release(lines)


def test_tree_needle_selection():
    tree = scan_tree(PKG)
    assert tree.repo == "minipkg"
    skips = SkipLog()
    names = sorted(f.name for f in needle_candidates(tree, skips))
    assert names == ["centroid", "clamp", "count_vowels", "distance", "polygon_area",
                     "running_total", "title_case", "wrap_words"]
    assert skips.counts["docstring_names_function"] == 1   # scale ("scale multiplies ...")
    assert skips.counts["name_not_unique"] == 2            # the two __init__
    assert skips.counts["body_too_short"] == 2             # area_of, short


def test_tree_tasks_prevent_leakage(tiny_tok):
    tasks = build_tasks_from_tree(PKG, tiny_tok, num_tasks=8, context_tokens=800,
                                  position_ratios=[0.1, 0.5, 0.9], seed=0)
    assert len(tasks) == 8
    assert [t["position_ratio"] for t in tasks] == [0.1, 0.5, 0.9] * 2 + [0.1, 0.5]
    for t in tasks:
        assert set(RECORD_FIELDS) <= set(t)
        key = description_key(t["description"])
        # docstring gone from the answer and from the context
        assert '"""' not in t["needle_code"].split("\n", 2)[1]
        assert key not in _norm(t["context"])
        assert t["context"].count(t["needle_code"]) == 1
        assert t["needle_code"].lstrip().startswith("def " + t["needle_name"])
        assert t["context_tokens"] <= 800
        assert t["context_tokens"] == len(encode(tiny_tok, t["context"]))
        if t["context_tokens"] >= 0.95 * 800:  # not cut short by an end of the tree
            middle = (t["needle_token_start"] + t["needle_token_end"]) / 2
            assert abs(middle / t["context_tokens"] - t["position_ratio"]) < 0.15
    assert sum(t["context_tokens"] >= 0.95 * 800 for t in tasks) >= 4
    poly = next(t for t in tasks if t["needle_name"] == "polygon_area")
    assert poly["description"].startswith("Compute the signed area enclosed")
    # area_of repeats polygon_area's docstring: it is cut out of the context
    assert "def area_of" not in poly["context"]
    assert "def distance" in poly["context"] or "def centroid" in poly["context"]
    wrap = next(t for t in tasks if t["needle_name"] == "wrap_words")
    assert wrap["needle_code"].startswith("    def wrap_words(self, text):\n        lines, ")


def test_tree_tasks_deterministic_and_exclusive(tiny_tok):
    a = build_tasks_from_tree(PKG, tiny_tok, num_tasks=4, context_tokens=800, seed=1)
    b = build_tasks_from_tree(str(PKG), tiny_tok, num_tasks=4, context_tokens=800, seed=1)
    c = build_tasks_from_tree(PKG, tiny_tok, num_tasks=4, context_tokens=800, seed=2)
    assert a == b and [t["id"] for t in a] != [t["id"] for t in c]
    rest = build_tasks_from_tree(PKG, tiny_tok, num_tasks=8, context_tokens=800, seed=1,
                                 exclude_ids=[t["id"] for t in a])
    assert len(rest) == 4 and not {t["id"] for t in rest} & {t["id"] for t in a}


def test_description_elsewhere_in_context_drops_the_task(tiny_tok, tmp_path):
    root = tmp_path / "pkg"
    shutil.copytree(PKG, root)
    geo = root / "geometry.py"
    note = "# Return the Euclidean length of the segment joining two points given as pairs.\n"
    text = geo.read_text().replace("def distance(", note + "def distance(")
    geo.write_text(text.replace("\n\ndef centroid(", "\n" + note + "\ndef centroid("))
    skips = SkipLog()
    tasks = build_tasks_from_tree(root, tiny_tok, num_tasks=8, context_tokens=800, seed=0,
                                  skips=skips)
    assert "distance" not in [t["needle_name"] for t in tasks]
    assert skips.counts["description_in_context"] == 1


def test_installed_package_and_language_check(tiny_tok):
    tasks = build_tasks_from_tree("pkg:json", tiny_tok, num_tasks=2, context_tokens=1024, seed=0)
    assert len(tasks) == 2 and tasks[0]["repo"].startswith("json")
    with pytest.raises(DataError, match="python only"):
        scan_tree(PKG, language="rust")
    with pytest.raises(DataError, match="no installed package"):
        scan_tree("pkg:no_such_module_xyz")
    with pytest.raises(FileNotFoundError):
        scan_tree(REPO / "does-not-exist")


@pytest.mark.parametrize("name", ["train.jsonl.gz", "eval.jsonl.gz"])
def test_shipped_samples_are_tasks(name):
    path = REPO / "data" / "samples" / "repoqa" / name
    tasks = load_release(path)
    assert len(tasks) >= 16
    for t in tasks:
        assert description_key(t["description"]) not in _norm(t["context"])
        assert t["context"].count(t["needle_code"]) == 1
        assert t["origin"] == "tree"
