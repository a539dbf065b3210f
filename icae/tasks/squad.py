"""SQuAD question answering (task ``qa``, data set ``squad``).

Data: :func:`icae.data.squad.build_squad_sets` (official SQuAD JSON files or a Hugging
Face dataset). Training and evaluation share :func:`icae.models.task_prompts.qa_prompt`
over context 0 (``data.squad.prompt`` before the question; training answers with the
first gold answer, records without one are skipped). Scored with the official SQuAD v1.1
exact match and F1 (max over all gold answers, written in percent as the official
script does) and BLEU-1 against the first answer. The budget is a setting
(``evaluation.max_new_tokens[_by_task]``).
"""

from __future__ import annotations

from icae.tasks.base import SHARED_UNITS, Example, PreparedData, Task


class SquadQA(Task):
    def configured(self, data_cfg) -> bool:
        s = data_cfg.squad
        return bool(s.train_file or s.eval_file or s.hf_dataset)

    def prepare(self, cfg, tokenizer) -> PreparedData:
        from icae.data.squad import build_squad_sets

        return PreparedData(*build_squad_sets(cfg.data.squad, cfg.seed,
                                              skip_bad_lines=cfg.data.skip_bad_lines))

    def training_examples(self, model, cfg, record, max_length, stats):
        from icae.models.task_prompts import PromptRule, qa_prompt
        from icae.training.examples import keep_example

        answers = record.get("answers") or []
        if not answers:
            stats.skip("no gold answer")
            return []
        # A training run may use every marker (it trains those it uses): no restriction.
        pieces = qa_prompt(model.prompts, PromptRule.for_model(model),
                           model.prompts.encode(record["context"]), record["question"],
                           cfg.data.squad.prompt, answers[0])
        return keep_example(model.encode(pieces), max_length, stats, model)

    def build_examples(self, rows, ctx):
        from icae.models.task_prompts import qa_prompt

        cfg = ctx.cfg
        out = []
        for row in rows:
            ids = ctx.prompts.encode(row["context"])
            answers = [str(a) for a in row["answers"]] or [""]
            prompt = qa_prompt(ctx.prompts, ctx.rule,
                               None if ctx.policy.baseline == "no_context" else ids,
                               row["question"], cfg.data.squad.prompt)
            ex = Example(id=str(row["id"]), prompt=prompt, reference=answers[0],
                         references=answers, max_new_tokens=self.max_new_tokens(cfg.evaluation),
                         context_lengths=[len(ids)],
                         meta={"question": row["question"],
                               **({"title": row["title"]} if "title" in row else {})})
            out.append(ctx.finish(ex))
        return out

    def score(self, ex, prediction, pred_ids):
        from icae.evaluation import metrics as M

        return {"exact_match": M.squad_exact_match(prediction, ex.references),
                "f1": M.squad_f1(prediction, ex.references),
                "bleu1": M.bleu1(ex.reference, prediction)}


TASK = SquadQA(
    name="qa", dataset="squad", title="SQuAD", caption="SQuAD question answering",
    dataset_title="SQuAD", data_inputs="train_file/eval_file/hf_dataset",
    eval_fields=("context", "question", "answers"),
    metrics=("exact_match", "f1", "bleu1"),
    headline=("exact_match", "f1", "bleu1"),
    units={"exact_match": "percent (official SQuAD v1.1)",
           "f1": "percent (official SQuAD v1.1, max over gold answers)",
           "bleu1": SHARED_UNITS["bleu1"]},
    percent=frozenset({"exact_match", "f1"}),
    budgeted=True)
