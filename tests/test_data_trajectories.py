import dataclasses
import json
from pathlib import Path

import pytest

from icae.config import TrajectoryDataConfig
from icae.data.io import DataError, SkipLog
from icae.data.tokens import encode
from icae.data.trajectories import (build_trajectory_sets, check_messages, load_trajectories,
                                    prepare_trajectory, turn_examples)
from tests.conftest import shared_path

FIX = Path(__file__).resolve().parent / "fixtures" / "data" / "trajectories" / "mini.jsonl"


def tcfg(**kw):
    base = dict(compress_threshold=20, max_observation_tokens=4096, max_target_tokens=512)
    base.update(kw)
    return TrajectoryDataConfig(**base)


U = {"role": "user", "content": "u"}
A = {"role": "assistant", "content": "a"}
S = {"role": "system", "content": "s"}


@pytest.mark.parametrize("messages, problem", [
    ([S, U, A], None),
    ([U, A, U, A, U], None),
    ([], "non-empty list"),
    ([S, U, U, A], "message 2: roles must alternate user/assistant"),
    ([A, U], "message 0: roles must alternate"),
    ([U, S, A], "message 1: a system message may only come first"),
    ([U, {"role": "tool", "content": "x"}], "message 1: unknown role 'tool'"),
    ([U, {"role": "assistant", "content": "  "}], "message 1 (assistant): empty content"),
    ([U, {"role": "assistant"}], "message 1 (assistant): 'content' must be a string"),
    ([S, U], "no assistant message"),
])
def test_check_messages(messages, problem):
    got = check_messages(messages)
    assert (got is None) if problem is None else (problem in got)


def test_load_and_bad_lines(tmp_path):
    recs = load_trajectories(FIX)
    assert [r["id"] for r in recs] == ["traj-a", "traj-b", "traj-c"]
    assert recs[0]["instance_id"] == "a"  # other fields are kept
    bad = tmp_path / "bad.jsonl"
    lines = FIX.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["messages"][2]["role"] = "assistant"  # two assistants in a row
    bad.write_text("\n".join([lines[0], json.dumps(broken), "{not json", lines[2],
                              json.dumps({"id": "x"})]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: message 2: roles must alternate"):
        load_trajectories(bad)
    skips = SkipLog()
    recs = load_trajectories(bad, skip_bad_lines=True, skips=skips)
    assert [r["id"] for r in recs] == ["traj-a", "traj-c"]
    assert skips.counts == {"bad_messages": 1, "malformed_json": 1, "missing_field": 1}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{oops\n")
    with pytest.raises(DataError, match="no valid trajectories"):
        load_trajectories(empty, skip_bad_lines=True)


def test_compress_flags_and_turns(tiny_tok):
    rec = load_trajectories(FIX)[0]
    out = prepare_trajectory(rec, tiny_tok, tcfg())
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    # the trailing user message (the submitted diff) has no target after it
    assert out["cut"]["messages_dropped"] == 1
    flags = [m["compress"] for m in out["messages"]]
    # system + first exchange stay text; the long observation is compressed, the short
    # "<returncode>0</returncode>" one is not
    assert flags == [False, False, False, True, False, False, False]
    assert len(encode(tiny_tok, out["messages"][1]["content"])) >= 20  # not compressed anyway
    turns = turn_examples(out)
    assert [t["message_index"] for t in turns] == [2, 4, 6]
    assert turns[1]["messages"] == out["messages"][:4] and turns[1]["compressed"] == [3]
    assert turns[2]["compressed"] == [3] and turns[2]["target"].startswith("THOUGHT: done")
    assert turns[0]["id"] == "traj-a#0"


def test_caps_are_applied_and_reported(tiny_tok):
    rec = load_trajectories(FIX)[0]
    out = prepare_trajectory(rec, tiny_tok, tcfg(max_observation_tokens=60,
                                                 max_target_tokens=16))
    obs = out["messages"][3]["content"]
    assert "tokens cut ...]" in obs and len(encode(tiny_tok, obs)) <= 60
    assert obs.startswith("<returncode>0") and obs.rstrip().endswith("</output>")  # head + tail
    for m in out["messages"]:
        limit = 16 if m["role"] == "assistant" else 60
        assert len(encode(tiny_tok, m["content"])) <= limit
    cut = out["cut"]
    assert cut["messages_truncated"] == len(cut["truncated"]) >= 3
    assert cut["tokens_cut"] == sum(t["tokens_cut"] for t in cut["truncated"])
    assert out["num_tokens"] == sum(len(encode(tiny_tok, m["content"]))
                                    for m in out["messages"])

    two = prepare_trajectory(rec, tiny_tok, tcfg(max_turns=2))
    assert [m["role"] for m in two["messages"]][-1] == "assistant"
    assert sum(m["role"] == "assistant" for m in two["messages"]) == 2
    assert two["cut"]["turns_dropped"] == 1

    small = prepare_trajectory(rec, tiny_tok, tcfg(max_total_tokens=60))
    assert sum(m["role"] == "assistant" for m in small["messages"]) == 1  # first exchange stays
    assert small["cut"]["turns_dropped"] == 2


def test_sets_and_summary(tiny_tok, tmp_path):
    other = tmp_path / "eval.jsonl"
    rows = [json.loads(x) for x in FIX.read_text().splitlines()]
    for r in rows:
        r["id"] = "eval-" + r["id"]
    other.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tcfg(train_file=str(FIX), eval_file=str(other), max_trajectories_eval=2)
    train, ev, summary = build_trajectory_sets(cfg, tiny_tok, seed=0)
    assert len(train) == 3 and len(ev) == 2
    assert summary["train"]["turns"] == 3 + 2 + 1
    assert summary["train"]["compressed_messages"] == 2  # traj-a and traj-b observations
    assert summary["train"]["cut"]["messages_dropped"] == 1
    again = build_trajectory_sets(cfg, tiny_tok, seed=0)
    assert again[1] == ev  # seeded selection
    with pytest.raises(DataError, match="in both train_file and eval_file"):
        build_trajectory_sets(dataclasses.replace(cfg, eval_file=str(FIX)), tiny_tok, 0)
    with pytest.raises(DataError, match="give train_file"):
        build_trajectory_sets(tcfg(), tiny_tok, 0)


def test_real_trajectories(tiny_tok):
    path = shared_path("data", "trajectories", "val.jsonl.gz")
    recs = load_trajectories(path)
    assert len(recs) == 25
    cfg = tcfg(compress_threshold=64, max_observation_tokens=512)
    out = [prepare_trajectory(r, tiny_tok, cfg) for r in recs[:3]]
    for rec in out:
        assert rec["messages"][-1]["role"] == "assistant"
        assert any(m["compress"] for m in rec["messages"])
        assert all(len(encode(tiny_tok, m["content"])) <= 512 for m in rec["messages"]
                   if m["role"] != "assistant")
