"""Agent trajectories: next-action prediction with compressed observations (task and data
set ``trajectories``).

Data: :func:`icae.data.trajectories.build_trajectory_sets` (observations flagged
``compress``). Training: :func:`icae.models.task_prompts.trajectory_sequences` (one
sequence per trajectory, or one per target turn for templates that re-render earlier
turns). Evaluation: one example per assistant turn after the first, at most
``evaluation.max_turns_per_trajectory`` per trajectory; the prompt is every message before
it, where user messages with ``compress: true`` become contexts
(:func:`~icae.models.task_prompts.trajectory_turn_prompt`: earlier assistant turns
tokenized on their own, exactly as in the training sequence). Each turn is scored on its
greedy continuation (``ar_*``) and teacher-forced (``tf_*``), also with the seed's looser
definitions; means are also given per trajectory and per turn index.
"""

from __future__ import annotations

from collections import defaultdict

from icae.tasks.base import Example, PreparedData, Task


def _cut_at_stop(ids: list[int], stops: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i], True
    return ids, False


class Trajectories(Task):
    def configured(self, data_cfg) -> bool:
        t = data_cfg.trajectories
        return bool(t.train_file or t.eval_file)

    def prepare(self, cfg, tokenizer) -> PreparedData:
        from icae.data.trajectories import build_trajectory_sets

        return PreparedData(*build_trajectory_sets(cfg.data.trajectories, tokenizer(),
                                                   cfg.seed,
                                                   skip_bad_lines=cfg.data.skip_bad_lines))

    def describe_prepared(self, s: dict) -> str:
        return "; " + ", ".join(
            f"{k}: {v['turns']} turns, {v['compressed_messages']} compressed, "
            f"{v['cut']['messages_truncated']} messages truncated"
            for k, v in s.items() if isinstance(v, dict) and "turns" in v)

    def training_examples(self, model, cfg, record, max_length, stats):
        from icae.models.task_prompts import trajectory_sequences
        from icae.training.examples import keep_example

        def sequences(upto=None):
            messages = record["messages"][:upto] if upto else record["messages"]
            return trajectory_sequences(model.prompts, messages)

        seqs = [model.encode(p) for p in sequences()]
        if len(seqs) == 1:
            upto = len(record["messages"])
            enc = seqs[0]
            # Drop whole trailing turns rather than cut through an observation's memory.
            while len(enc.input_ids) > max_length and upto > 4:
                upto -= 2
                shorter = sequences(upto)
                if len(shorter) != 1:
                    raise ValueError("this chat template re-renders earlier turns of the "
                                     f"first {upto} messages of trajectory {record.get('id')!r}")
                enc = model.encode(shorter[0])
            if upto < len(record["messages"]):
                stats.truncated += 1
            return keep_example(enc, max_length, stats, model)
        # One sequence per target turn, each longer than the one before: keep those that
        # fit whole (a cut would drop the target at their end).
        fitting = [e for e in seqs if len(e.input_ids) <= max_length]
        if len(fitting) < len(seqs):
            stats.truncated += 1
        out = [e for e in fitting[:-1] if e.num_target_tokens]
        stats.examples += len(out)
        if not fitting:
            stats.skip("first target turn does not fit max_length")
            return out
        return out + keep_example(fitting[-1], max_length, stats, model)

    def build_examples(self, rows, ctx):
        """Reference ids: the template's rendering of the answer up to its end-of-turn
        token (what greedy decoding must produce). Teacher-forced scoring covers those
        tokens plus the end-of-turn token; the budget for autoregressive decoding is that
        many tokens."""
        from icae.models.task_prompts import trajectory_turn_prompt

        max_turns = ctx.cfg.evaluation.max_turns_per_trajectory
        stops = set(ctx.stop_ids)
        out = []
        for row in rows:
            messages = row["messages"]
            if not isinstance(messages, list):
                raise ValueError(f"trajectory {row['id']!r}: messages must be a list")
            assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
            for turn, idx in enumerate(assistant[1:][:max_turns], 1):
                target = messages[idx]["content"]
                prompt, contexts = trajectory_turn_prompt(ctx.prompts, messages, idx)
                teacher_forced, _ = trajectory_turn_prompt(ctx.prompts, messages, idx, target)
                target_ids = list(teacher_forced[-1].ids)  # the template's rendering
                ref_ids, stopped = _cut_at_stop(target_ids, stops)
                ex = Example(
                    id=f"{row['id']}#{turn}", prompt=prompt,
                    reference=target, reference_ids=ref_ids, max_new_tokens=len(ref_ids) + 1,
                    context_lengths=[len(c) for c in contexts],
                    teacher_forced=teacher_forced,
                    tf_tokens=len(ref_ids) + int(stopped),
                    meta={"trajectory_id": str(row["id"]), "turn": turn, "message_index": idx,
                          "num_contexts": len(contexts)})
                out.append(ctx.finish(ex))
        return out

    def score(self, ex, prediction, pred_ids):
        """The greedy continuation's scores; the run adds the teacher-forced ones."""
        from icae.evaluation import metrics as M

        return {"ar_bleu1": M.bleu1(ex.reference, prediction),
                "ar_token_accuracy": M.token_accuracy(pred_ids, ex.reference_ids),
                "ar_exact_match": M.exact_match(prediction, ex.reference),
                # the seed's definitions, for comparison with its published numbers
                "ar_seed_token_accuracy": M.seed_token_accuracy(pred_ids, ex.reference_ids),
                "ar_seed_exact_match_first_line": M.seed_exact_match_first_line(
                    prediction, ex.reference)}

    def breakdowns(self, records, means):
        from icae.evaluation.summary import mean, ratio

        by_traj: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_traj[r["trajectory_id"]].append(r)
        rows = [("num_trajectories", len(by_traj), len(by_traj))]
        for name in self.metrics:
            per_traj = [mean(t["metrics"].get(name) for t in turns)[0]
                        for turns in by_traj.values()]
            rows.append((f"trajectory_{name}", *mean(per_traj)))
        # Each trajectory's last evaluated turn holds every observation seen so far.
        last = [max(turns, key=lambda t: t["turn"]) for turns in by_traj.values()]
        c = sum(t["context_tokens"] for t in last)
        m = sum(t["memory_tokens"] for t in last)
        rows.append(("trajectory_context_tokens_total", c, len(last)))
        rows.append(("trajectory_memory_tokens_total", m, len(last)))
        rows.append(("trajectory_compression_rate", ratio(c, m), len(last)))
        for turn in sorted({r["turn"] for r in records}):
            recs = [r for r in records if r["turn"] == turn]
            rows += means(self.metrics, recs, f"[turn={turn}]")
            rows.append((f"compression_rate[turn={turn}]",
                         ratio(sum(r["context_tokens"] for r in recs),
                               sum(r["memory_tokens"] for r in recs)), len(recs)))
        return rows


TASK = Trajectories(
    name="trajectories", dataset="trajectories", title="Trajectories",
    caption="Agent trajectories: next-action prediction with compressed observations "
            "(AR: generated, TF: teacher-forced)",
    dataset_title="trajectories", data_inputs="train_file/eval_file",
    eval_fields=("messages",),
    metrics=("ar_bleu1", "ar_token_accuracy", "ar_exact_match", "tf_token_accuracy",
             "tf_loss", "tf_exact_match",
             # the seed's definitions (icae.evaluation.metrics, "seed_*")
             "ar_seed_token_accuracy", "ar_seed_exact_match_first_line", "tf_bleu1",
             "tf_seed_exact_match_first_line"),
    headline=("ar_bleu1", "ar_token_accuracy", "tf_token_accuracy", "tf_loss"),
    units={"ar_*": "autoregressive (greedy) prediction vs the turn's target",
           "tf_*": ("teacher-forced: argmax accuracy / mean cross-entropy (nats) on target "
                    "tokens"),
           "tf_exact_match": "teacher-forced: 1 when every target token is the argmax "
                             "prediction",
           "tf_bleu1": ("teacher-forced (seed): BLEU-1 of the decoded argmax predictions vs "
                        "targets"),
           "*seed_exact_match_first_line": ("the seed's exact match: normalised first lines "
                                            "equal (looser than exact_match)"),
           "ar_seed_token_accuracy": ("the seed's token accuracy: equal positions / the "
                                      "longer of prediction and reference (extra tokens "
                                      "count as errors)"),
           "trajectory_*": "mean over trajectories of the per-trajectory mean over turns"},
    teacher_forced=True, turns=True,
    no_examples_hint=" (each trajectory needs at least two assistant messages)")
