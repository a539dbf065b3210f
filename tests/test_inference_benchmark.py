"""``icae benchmark-inference`` on CPU with a tiny shape: every scenario runs, the JSON has
the timings the GPU run reports, and the goals are computed from them."""

from __future__ import annotations

import json

from icae.cli import main

WORDS = ("The quick brown fox jumps over the lazy dog. Alice was beginning to get very "
         "tired of sitting by her sister on the bank. def function(x): return x + 1 ")


def _trajectory_file(path):
    msgs = [{"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Fix the bug."},
            {"role": "assistant", "content": "THOUGHT: look\n```bash\ncat fox.py\n```"}]
    for k in range(3):
        msgs.append({"role": "user", "content": WORDS * (2 + k)})  # long: compressed
        msgs.append({"role": "assistant", "content": f"THOUGHT: step {k}\n```bash\nls\n```"})
    path.write_text(json.dumps({"id": "demo/traj-1", "messages": msgs}) + "\n")
    return path


def test_benchmark_inference_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    traj = _trajectory_file(tmp_path / "traj.jsonl")
    rc = main(["benchmark-inference", "--shape", "tiny", "--scenarios", "qa,throughput,agent",
               "--contexts", "96", "--batches", "1", "--new-tokens", "4", "--repeats", "1",
               "--question-tokens", "8", "--profile-context", "96", "--throughput-context", "96", "--max-batch", "2",
               "--agent-file", str(traj), "--agent-min-history", "50", "--out", str(out),
               "--log-level", "WARNING", "model.mem_size=8", "model.mean_compression_rate=4",
               "model.lora_r=4"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["meta"]["device"] == "cpu" and result["meta"]["kv_bytes_per_token"] > 0
    cases = {c["name"]: c for c in result["cases"]}
    assert not [c for c in cases.values() if "error" in c], cases
    qa = cases["qa L96 b1"]
    assert qa["memory_slots"] == 8 * 3  # 96 tokens, 32 per segment
    for side in ("icae", "icae_memory_once", "llm"):
        r = qa[side]
        assert r["prefill_s"] > 0 and r["decode_s"] > 0 and r["answer_s"] > 0
    assert qa["icae"]["compress_s"] > 0 and qa["llm"]["compress_s"] == 0
    assert qa["icae"]["cuda_graph"] is False  # the static cache, stepped eagerly on CPU
    assert qa["icae"]["decoder_prompt_tokens"] < qa["llm"]["decoder_prompt_tokens"]
    assert qa["llm_prefix_reuse"]["prefill_s"] > 0
    assert qa["icae_dynamic_cache"]["greedy_tokens_equal_static"] is True  # float32 CPU
    prof = qa["llm_decode_profile"]
    assert "error" not in prof and prof["ops_per_step"] > 10  # a step is many small ops
    tp = cases["throughput L96"]
    assert tp["icae_memory_once"]["batch"] == tp["llm"]["batch"] == 2  # --max-batch on CPU
    assert "icae_over_llm_answers_per_s_memory_once" in tp
    agent = cases["agent traj-1"]
    assert agent["turns"] == 3
    for side in ("icae", "llm"):
        turns = agent[side]["turns"]
        assert all(t["reused_tokens"] > 0 for t in turns[1:])
        assert agent[side]["kv_cache_peak_bytes"] == max(t["kv_cache_bytes"] for t in turns)
    assert agent["icae"]["kv_cache_peak_bytes"] < agent["llm"]["kv_cache_peak_bytes"]
    assert all(t["compress_s"] == 0 for t in agent["llm"]["turns"])
    assert all(t["compress_s"] > 0 for t in agent["icae"]["turns"])  # each has a new observation
    assert agent["turns_beyond_min_history"] >= 1
    assert {"qa_4k_batched_answers_per_s", "agent_turns_beyond_16k"} <= set(result["goals"])
    printed = capsys.readouterr().out
    assert "| qa L96 b1 | icae |" in printed and "goal agent_turns_beyond_16k" in printed
