"""Pre-training examples drawn afresh from the training documents on every pass.

A prepared pre-training set keeps its training documents' tokens (``<prepared>/pretrain/
train.arrow``, memory-mapped: :class:`icae.data.prepared.TokenDocuments`).
:class:`PretrainSpans` turns them into as many examples as the run needs: example ``i``
belongs to pass ``p = i // D`` over the ``D`` documents, whose order is a seeded
permutation per pass; its span (length in ``min_len * (1 +- len_jitter)``, offset) and its
objective (autoencoding, language modelling or recall) are drawn from a generator seeded
by ``(seed, p, document)``. So repeated passes never replay identical spans, and every
example is a pure function of its index: a resumed run sees exactly the examples the
interrupted one would have seen.

The dataset is read in index order (``ordered``; the shuffling is its own), so index ``i``
is the ``i``-th example of training and the objective mix can follow the training clock:
examples before ``data.pretrain.ae_only_examples`` are autoencoding only, then the LM
and recall shares ramp linearly to ``lm_ratio`` and ``recall_ratio`` over
``lm_ratio_ramp_examples`` examples.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset, Sampler

from icae.config import PretrainDataConfig
from icae.data.prepared import TokenDocuments
from icae.models.objectives import Objective


def _schedule(index: int, pcfg: PretrainDataConfig) -> float:
    """How much of the LM and recall shares example ``index`` gets (0 in the AE-only
    warm-up, then a linear ramp to 1)."""
    warm = pcfg.ae_only_examples
    if index < warm:
        return 0.0
    ramp = pcfg.lm_ratio_ramp_examples
    if ramp and index < warm + ramp:
        return (index - warm) / ramp
    return 1.0


def lm_share(index: int, pcfg: PretrainDataConfig) -> float:
    """The probability that example ``index`` is language modelling."""
    return pcfg.lm_ratio * _schedule(index, pcfg)


def recall_share(index: int, pcfg: PretrainDataConfig) -> float:
    """The probability that example ``index`` is recall."""
    return pcfg.recall_ratio * _schedule(index, pcfg)


def shortest_recall_prompt(pcfg: PretrainDataConfig) -> int:
    """Recall prompts are drawn from ``recall_prompt_len // 2 .. recall_prompt_len``."""
    return max(1, pcfg.recall_prompt_len // 2)


class Plan(NamedTuple):
    """Every random choice of one example: its objective, document, span (start and
    length) and target length; for recall, where in the span the prompt starts and how
    long it is."""
    task: str
    doc: int
    start: int
    span: int
    target: int
    prompt_at: int = 0
    prompt_len: int = 0


class PretrainSpans(Dataset):
    ordered = True

    def __init__(self, documents: TokenDocuments, pcfg: PretrainDataConfig, seed: int,
                 num_examples: int, encode, max_length: int | None = None):
        self.docs = documents
        self.pcfg = pcfg
        self.seed = seed
        self.num_examples = int(num_examples)
        self.encode = encode  # (task name, context ids, continuation ids) -> EncodedPrompt
        self.max_length = max_length
        self.lo = max(1, int(pcfg.min_len * (1 - pcfg.len_jitter)))
        self.hi = max(self.lo, int(round(pcfg.min_len * (1 + pcfg.len_jitter))))
        lengths = np.diff(documents.offsets)
        self.usable = np.flatnonzero(lengths >= self.lo)
        if len(self.usable) == 0:
            raise ValueError(f"no training document has the {self.lo} tokens a span needs "
                             f"(data.pretrain.min_len={pcfg.min_len})")
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_examples

    def _order(self, p: int) -> np.ndarray:
        if p not in self._perm:
            if len(self._perm) > 4:
                self._perm.clear()
            self._perm[p] = np.random.default_rng([self.seed, p]).permutation(self.usable)
        return self._perm[p]

    def _plan(self, index: int) -> Plan:
        """Every random choice of example ``index``, no tokens read. (The draws of AE and
        LM examples are those of runs without recall: one uniform number picks the
        objective.)"""
        pcfg = self.pcfg
        D = len(self.usable)
        p, j = divmod(index, D)
        doc = int(self._order(p)[j])
        rng = random.Random(f"{self.seed}:{p}:{doc}")
        n_doc = self.docs.length(doc)
        span = min(rng.randint(self.lo, self.hi), n_doc)
        target = pcfg.lm_target_len or span
        u, lm = rng.random(), lm_share(index, pcfg)
        if u < lm and n_doc >= span + target:
            return Plan("lm", doc, rng.randint(0, n_doc - span - target), span, target)
        start = rng.randint(0, n_doc - span)
        if lm <= u < lm + recall_share(index, pcfg):
            target = pcfg.recall_target_len
            prompt_len = rng.randint(shortest_recall_prompt(pcfg), pcfg.recall_prompt_len)
            if span >= prompt_len + target:
                return Plan("recall", doc, start, span, target,
                            rng.randint(0, span - prompt_len - target), prompt_len)
        return Plan("ae", doc, start, span, 0)

    def draw(self, index: int) -> tuple[str, list[int], list[int], list[int]]:
        """``(task, context ids, continuation ids, prompt ids)`` of example ``index``: for
        recall the continuation is the target and the prompt the tokens before it, both
        inside the context; the prompt is empty otherwise."""
        plan = self._plan(index)
        end = plan.start + plan.span
        ctx = self.docs.slice(plan.doc, plan.start, end)
        if plan.task == "recall":
            cut = plan.prompt_at + plan.prompt_len
            return "recall", ctx, ctx[cut:cut + plan.target], ctx[plan.prompt_at:cut]
        cont = self.docs.slice(plan.doc, end, end + plan.target) if plan.target else []
        return plan.task, ctx, cont, []

    def objectives(self) -> list[str]:
        """The objectives some example of this dataset can have: AE always; LM when an
        index past the AE-only warm-up has a positive LM share and some document holds a
        span plus its target; recall likewise when the longest span holds the shortest
        prompt plus its target."""
        pcfg = self.pcfg
        out = ["ae"]
        last = self.num_examples - 1
        longest_doc = int(np.diff(self.docs.offsets)[self.usable].max())
        if last >= 0 and lm_share(last, pcfg) > 0:
            if longest_doc >= self.lo + (pcfg.lm_target_len or self.lo):
                out.append("lm")
        if last >= 0 and recall_share(last, pcfg) > 0:
            if min(longest_doc, self.hi) >= shortest_recall_prompt(pcfg) + pcfg.recall_target_len:
                out.append("recall")
        return out

    def representatives(self) -> list:
        """One encoded example per objective in :meth:`objectives` (built from the
        longest document), e.g. to see which markers training will use without
        encoding every example."""
        pcfg = self.pcfg
        doc = int(self.usable[np.argmax(np.diff(self.docs.offsets)[self.usable])])
        objectives = self.objectives()
        ctx = self.docs.slice(doc, 0, self.lo)
        out = [self.encode("ae", ctx, [], [])]
        if "lm" in objectives:
            target = pcfg.lm_target_len or self.lo
            out.append(self.encode("lm", ctx, self.docs.slice(doc, self.lo, self.lo + target),
                                   []))
        if "recall" in objectives:
            k, t = shortest_recall_prompt(pcfg), pcfg.recall_target_len
            span = self.docs.slice(doc, 0, max(self.lo, k + t))
            out.append(self.encode("recall", span, span[k:k + t], span[:k]))
        return out

    def example_length(self, index: int) -> tuple[int, int]:
        """``(decoder target tokens, context tokens)`` of example ``index``, without
        reading or encoding it: what :class:`LengthGroupedOrder` sorts by (for recall the
        decoder also reads the prompt)."""
        plan = self._plan(index)
        decoded = {"ae": plan.span, "lm": plan.target,
                   "recall": plan.prompt_len + plan.target}[plan.task]
        return decoded, plan.span

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        return self.encode(*self.draw(index))


def task_id(name: str) -> int:
    return Objective.from_marker(name)


class LengthGroupedOrder(Sampler):
    """The indices ``0..n-1`` in windows of ``window`` consecutive indices; inside a window
    the examples are sorted by ``length_of(index)`` and cut into micro-batches of
    ``batch``, whose order is a seeded shuffle. Every index is read once, no window
    reaches into another (so the objective mix still follows the training clock to
    within one window), and the order is a pure function of ``(seed, n, window, batch)``:
    a resumed run skips to exactly the batches the interrupted one had not trained."""

    def __init__(self, length_of, n: int, window: int, batch: int, seed: int):
        if window < 1 or batch < 1:
            raise ValueError(f"window ({window}) and batch ({batch}) must be positive")
        self.length_of, self.n = length_of, int(n)
        self.window, self.batch, self.seed = int(window), int(batch), int(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for start in range(0, self.n, self.window):
            idx = np.arange(start, min(start + self.window, self.n))
            keys = np.array([self.length_of(int(i)) for i in idx]).reshape(len(idx), -1)
            # lexsort sorts by its last key first; a stable sort keeps index order on ties.
            order = idx[np.lexsort(keys.T[::-1])]
            batches = [order[j:j + self.batch] for j in range(0, len(order), self.batch)]
            rng = np.random.default_rng([self.seed, start])
            for b in rng.permutation(len(batches)):
                yield from (int(i) for i in batches[b])
