"""Autoencoding (task ``ae``) on the pre-training data set (``pretrain``).

Data: :func:`icae.data.corpus.build_pretrain_sets` (spans of the configured corpora, half
autoencoding and half language modelling by ``data.pretrain.lm_ratio``). The prepared
train split holds the training documents' tokens, from which training draws fresh spans
every pass (:mod:`icae.training.spans`); the eval split holds span records.

Training: the ``ae`` / ``lm`` pre-training objectives (:func:`icae.training.examples.
pretrain_pieces`). This is not a fine-tuning data set.

Evaluation: reconstruct ``context_ids``; every eval row is used (``ae`` and ``lm`` rows
alike). ICAE gets ``C [AE]`` (the pre-training autoencoding prompt). The plain LLM has no
[AE] marker, so it gets a chat prompt ``Repeat the following text exactly:\\n\\nC``
(:data:`LLM_INSTRUCTION`). The budget is ``len(context) + 1`` (the text and its end token),
whatever ``evaluation.max_new_tokens`` says: a shorter budget would cut every
reconstruction.
"""

from __future__ import annotations

from icae.tasks.base import SHARED_UNITS, Example, Task

LLM_INSTRUCTION = "Repeat the following text exactly:\n\n"


class Autoencoding(Task):
    def configured(self, data_cfg) -> bool:
        return bool(data_cfg.pretrain.sources)

    def write_prepared(self, cfg, tokenizer, folder):
        """``train.arrow``: the training documents' tokens, written as they are
        tokenized (training draws fresh spans from them every pass,
        :mod:`icae.training.spans`); the prepare-time training spans are only counted.
        ``eval.arrow``: the eval span records."""
        from icae.data.corpus import build_pretrain_sets
        from icae.data.prepared import TokenDocumentWriter, split_path, write_records

        tok = tokenizer()
        with TokenDocumentWriter(split_path(folder, "train"), len(tok)) as documents:
            _, eval_set, summary = build_pretrain_sets(
                cfg.data.pretrain, tok, cfg.seed, skip_bad_lines=cfg.data.skip_bad_lines,
                progress=cfg.data.progress, train_documents=documents, keep_train=False,
                num_proc=cfg.data.num_proc)
        files = {"train": documents.documents,
                 "eval": write_records(split_path(folder, "eval"), eval_set)}
        return files, {**summary, "train_documents": documents.info()}

    def describe_prepared(self, s: dict) -> str:
        return (f"; documents read {s['documents_read']}, used {s['documents_used']}, "
                f"skipped {s['documents_skipped']['train_sources']['total']}"
                f"+{s['documents_skipped']['eval_sources']['total']}; train tokens "
                f"{s['train']['tokens']} (ae {s['train']['ae']}, lm {s['train']['lm']})")

    def training_examples(self, model, cfg, record, max_length, stats):
        from icae.training.examples import keep_example, pretrain_pieces

        pieces, objective = pretrain_pieces(model, record)
        return keep_example(model.encode(pieces, task=objective), max_length, stats, model)

    def build_examples(self, rows, ctx):
        """Rows keep ``source`` and ``objective`` (the record's pre-training task, ae or
        lm)."""
        from icae.models.task_prompts import autoencoding_prompt
        from icae.models.templates import context_slot

        tok = ctx.prompts.tokenizer
        out = []
        for row in rows:
            ids = [int(t) for t in row["context_ids"]]
            if ctx.policy.is_icae:
                prompt = autoencoding_prompt(ctx.prompts, ctx.rule, ids)
            else:
                msgs = [{"role": "user", "content": LLM_INSTRUCTION + context_slot(0)}]
                prompt = ctx.prompts.chat(msgs, [ids])
            ex = Example(id=str(row["id"]), prompt=prompt,
                         reference=tok.decode(ids, skip_special_tokens=True),
                         reference_ids=ids, max_new_tokens=len(ids) + 1,
                         context_lengths=[len(ids)],
                         meta={"source": row.get("source"), "objective": row.get("task")})
            out.append(ctx.finish(ex))
        return out

    def score(self, ex, prediction, pred_ids):
        from icae.evaluation import metrics as M

        return {"bleu1": M.bleu1(ex.reference, prediction),
                "bleu4": M.bleu4(ex.reference, prediction),
                "token_accuracy": M.token_accuracy(pred_ids, ex.reference_ids),
                "exact_match": M.exact_match(prediction, ex.reference)}


TASK = Autoencoding(
    name="ae", dataset="pretrain", title="Autoencoding",
    caption="Autoencoding: reconstruction of held-out pre-training contexts from memory",
    dataset_title="pre-training", data_inputs="sources",
    eval_fields=("context_ids",),
    metrics=("bleu1", "bleu4", "token_accuracy", "exact_match"),
    headline=("bleu1", "bleu4", "token_accuracy", "exact_match"),
    units={"bleu1": SHARED_UNITS["bleu1"],
           "bleu4": "fraction [0,1], NLTK sentence BLEU-4 (uniform weights, unsmoothed) on "
                    "BLEU-1's tokens: word order counts, one shifted token does not sink it",
           "token_accuracy": SHARED_UNITS["token_accuracy"],
           "exact_match": "fraction of exact strings"},
    finetunable=False)
