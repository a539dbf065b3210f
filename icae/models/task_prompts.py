"""One prompt function per task, shared by training and evaluation (both in the task's
module of :mod:`icae.tasks`), so that a model is evaluated on exactly the prompt layout it
was trained on.

What a prompt may contain is a :class:`PromptRule`:

- ``compresses(n)``: whether a context of ``n`` tokens becomes memory slots. It is the
  model's own rule (``ICAE.compresses``; never for the plain LLM). The [FT] marker and any
  wording that only makes sense after memory appear iff the context is compressed; a
  context kept as text reads exactly as it does for the plain LLM.
- ``trained_markers``: the learned markers whose embeddings the evaluated checkpoint has
  trained (``None``: no restriction; a training run trains the markers it uses). No
  prompt contains a marker outside this set. Fallbacks (:data:`MARKER_FALLBACK`): where
  a prompt wants [FT] but the checkpoint never trained it (a pre-trained-only ICAE on QA
  or RepoQA), the [LM] marker takes its place: in pre-training [LM] is the trained
  "continue from this memory" signal, and everything else in the prompt stays the same, so
  pre-trained-only and fine-tuned ICAE differ by that one token. With neither trained,
  the memory is followed directly by the text that follows the marker elsewhere
  (QA: the same ``\\n\\n`` separator as an uncompressed context). [AE] has no substitute:
  autoencoding evaluation of a checkpoint that never trained [AE] is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from icae.models.templates import (MARKERS, Piece, compressed_conversation, context_slot,
                                   marker_slot)

# Marker wanted -> markers tried in order; none trained: no marker at all.
MARKER_FALLBACK: dict[str, tuple[str, ...]] = {"ft": ("ft", "lm"), "lm": ("lm",),
                                               "ae": ("ae",)}


def _never(_length: int) -> bool:
    return False


@dataclass(frozen=True)
class PromptRule:
    compresses: Callable[[int], bool] = _never
    trained_markers: frozenset[str] | None = None

    @classmethod
    def for_model(cls, model, trained_markers=None) -> "PromptRule":
        """The rule of ``model``: ICAE compresses by ``model.compresses``, the LLM never."""
        compresses = model.compresses if getattr(model, "compresses_contexts", False) \
            else _never
        return cls(compresses, None if trained_markers is None else frozenset(trained_markers))

    def marker(self, kind: str) -> str | None:
        """The marker to write where ``kind`` is wanted (see :data:`MARKER_FALLBACK`)."""
        if kind not in MARKERS:
            raise ValueError(f"unknown marker {kind!r}; expected one of {MARKERS}")
        for candidate in MARKER_FALLBACK[kind]:
            if self.trained_markers is None or candidate in self.trained_markers:
                return candidate
        return None

    def is_compressed(self, context: Sequence[int] | None) -> bool:
        return context is not None and len(context) > 0 and bool(self.compresses(len(context)))


# -- QA (SQuAD) ------------------------------------------------------------------------------


def qa_messages(question: str, prompt: str, compressed: bool, marker: str | None = "ft"
                ) -> list[dict]:
    """SQuAD-style question over context 0: ``[memory][FT]prompt question`` when the
    context is compressed, ``context\\n\\nprompt question`` when it is read as text (also
    after memory when no trained marker is available)."""
    sep = marker_slot(marker) if compressed and marker else "\n\n"
    return [{"role": "user", "content": f"{context_slot(0)}{sep}{prompt}{question}"}]


def qa_prompt(builder, rule: PromptRule, context: Sequence[int] | None, question: str,
              instruction: str, answer: str | None = None) -> list[Piece]:
    """The QA prompt (plus ``answer`` as the target) for training and evaluation alike;
    ``context=None`` is the no-context baseline (instruction and question alone)."""
    if context is None:
        msgs = [{"role": "user", "content": f"{instruction}{question}"}]
        return builder.chat(msgs, answer=answer)
    compressed = rule.is_compressed(context)
    msgs = qa_messages(question, instruction, compressed,
                       rule.marker("ft") if compressed else None)
    return builder.chat(msgs, [list(context)], answer=answer)


# -- RepoQA ------------------------------------------------------------------------------------


def repoqa_messages(description: str, instruction: str, compressed: bool,
                    marker: str | None = "ft") -> list[dict]:
    ft = marker_slot(marker) if compressed and marker else ""
    return [{"role": "user", "content":
             f"```\n{context_slot(0)}\n```{ft}\n\n{instruction}\n\nDescription:\n{description}"}]


def repoqa_answer(rec: dict) -> str:
    """The training target of a RepoQA task: the needle in a fenced code block."""
    return f"```{rec.get('language', '')}\n{rec['needle_code']}\n```"


def repoqa_prompt(builder, rule: PromptRule, context: Sequence[int] | None,
                  description: str, instruction: str, answer: str | None = None
                  ) -> list[Piece]:
    compressed = rule.is_compressed(context)
    msgs = repoqa_messages(description, instruction, compressed,
                           rule.marker("ft") if compressed else None)
    return builder.chat(msgs, [list(context or [])], answer=answer)


# -- autoencoding ------------------------------------------------------------------------------


def autoencoding_prompt(builder, rule: PromptRule, context: Sequence[int]) -> list[Piece]:
    """ICAE's ``[memory][AE]`` prompt; ValueError when [AE] was never trained."""
    if rule.marker("ae") is None:
        raise ValueError("the checkpoint never trained the [AE] marker (it saw no "
                         "autoencoding objective), so it cannot be evaluated on task ae")
    return builder.autoencoding_prompt(context)


# -- trajectories ------------------------------------------------------------------------------


def first_target_index(messages: list[dict]) -> int:
    """Targets are the assistant turns after the first user/assistant exchange."""
    seen = 0
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            seen += 1
            if seen == 2:
                return i
    return len(messages)


def target_turns(messages: list[dict]) -> list[int]:
    """Indices of the assistant messages that are targets (after the first exchange)."""
    first = first_target_index(messages)
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i >= first]


def trajectory_sequences(builder, messages: list[dict]) -> list[list[Piece]]:
    """Training sequences of one trajectory, observations flagged ``compress`` as
    contexts, the assistant turns after the first exchange as targets.

    Both layouts are exact: every target is preceded by exactly its evaluation prompt
    (:func:`trajectory_turn_prompt`: all earlier messages as the template renders them,
    then the generation prompt) and is the template's rendering of that turn.

    - Prefix-stable templates (ChatML, Mistral, Llama-3, template-less): one sequence for
      the whole trajectory (:meth:`~icae.models.templates.PromptBuilder.conversation`).
    - Templates that re-render earlier turns when a turn is added (Qwen3 writes the empty
      ``<think>\n\n</think>\n\n`` only on turns after the last user message, so a turn
      rendered as the final one changes once the next observation arrives): no single
      sequence holds every turn's evaluation prompt, so each target turn gets its own
      sequence, its evaluation prompt plus the turn (the teacher-forced sequence
      evaluation scores, :func:`trajectory_turn_examples`). The seed, too, builds each
      turn's prompt with the earlier turns' think blocks cut from the history. It costs
      one pass per target over a growing history (with ICAE each observation is
      compressed once per sequence that holds it)."""
    msgs, contexts = compressed_conversation(messages, builder.encode)
    if builder.prefix_stable(msgs):
        return [builder.conversation(msgs, contexts,
                                     first_trained_message=first_target_index(messages))]
    return [pieces for _, pieces in trajectory_turn_examples(builder, messages, msgs, contexts)]


def trajectory_turn_examples(builder, messages: list[dict], msgs=None, contexts=None
                             ) -> list[tuple[int, list[Piece]]]:
    """``(message index, evaluation prompt + that turn as target)`` for every target turn;
    the same pieces as :func:`trajectory_turn_prompt` with ``answer``."""
    if msgs is None:
        msgs, contexts = compressed_conversation(messages, builder.encode)
    return [(k, builder.conversation_prompt(msgs[:k], contexts, answer=messages[k]["content"]))
            for k in target_turns(messages)]


def trajectory_turn_prompt(builder, messages: list[dict], upto: int,
                           answer: str | None = None) -> tuple[list[Piece], list[list[int]]]:
    """Evaluation: the generation prompt for assistant message ``upto`` (every message
    before it), plus that message as the target when ``answer`` is given; and the
    contexts."""
    msgs, contexts = compressed_conversation(messages[:upto], builder.encode)
    return builder.conversation_prompt(msgs, contexts, answer=answer), contexts
