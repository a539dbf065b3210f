import gzip
import json
import os
import stat

import pytest

from icae.data.io import (DataError, SkipLog, read_json, read_jsonl, relax_permissions,
                          write_jsonl)


def test_read_jsonl_plain_and_gz(tmp_path):
    rows = [{"a": 1}, {"b": "é"}]
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_jsonl(p) == rows
    g = tmp_path / "x.jsonl.gz"
    with gzip.open(g, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    assert read_jsonl(g) == rows


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": \n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        read_jsonl(p)
    skips = SkipLog()
    rows = read_jsonl(p, skip_bad_lines=True, skips=skips)
    assert rows == [{"a": 1}, {"a": 2}]
    assert skips.counts == {"malformed_json": 1, "not_an_object": 1}
    assert "bad.jsonl:4" in skips.examples["not_an_object"][0]


def test_read_json_error_has_line(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(DataError, match=r"x\.json:4:1: invalid JSON"):
        read_json(p)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")


def test_write_jsonl_atomic_and_deterministic_gz(tmp_path):
    rows = [{"id": str(i), "x": [i] * 3} for i in range(5)]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    assert write_jsonl(a, rows) == 5
    write_jsonl(b, iter(rows))
    assert a.read_bytes() == b.read_bytes()  # no timestamp in the gzip header
    assert read_jsonl(a) == rows

    def broken():
        yield {"ok": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(a, broken())
    assert read_jsonl(a) == rows  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_relax_permissions(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    f = d / "f"
    f.write_text("x")
    os.chmod(f, 0o600)
    relax_permissions(d)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask
