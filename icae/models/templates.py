"""Prompt layouts, built from the tokenizer's own chat template.

A prompt is a list of *pieces*:

- :class:`Text` – token ids taken as they are (``train=True`` marks a target: its tokens
  carry labels);
- :class:`Context` – a context that ICAE compresses into memory slots and the plain-LLM
  baseline reads as text;
- :class:`Marker` – one of ICAE's learned markers ``ae`` / ``lm`` / ``ft`` (dropped by the
  baseline, which has no learned embeddings).

Chat prompts are rendered by ``tokenizer.apply_chat_template`` with unique marker strings
standing where contexts and markers go; the rendered string is split on those markers and
each text run tokenized without extra special tokens. (SentencePiece tokenizers such as
Mistral's begin each separately tokenized run with a word boundary "▁", exactly as the
original ICAE Mistral prompts did; BPE tokenizers such as Qwen's are unaffected.) No token id is hard-coded: BOS, EOS
and turn delimiters come out of the template itself. Qwen3's thinking block is disabled
with ``enable_thinking=False`` (other templates ignore the variable).

A tokenizer without a chat template gets this plain layout (documented behaviour)::

    {system}\\n\\n                 (only when there is a system message)
    User: {content}\\n\\n          (each user message)
    Assistant: {content}{eos}\\n\\n (each assistant message)
    Assistant:                    (generation prompt)

Pre-training prompts follow ICAE and use no chat template:
autoencoding is ``[memory] [AE] text <eos>``; language modelling is
``[memory] [LM] continuation``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from icae.models.objectives import MARKERS

_CTX = "\ue000ICAE_CONTEXT_{}\ue001"
_MARK = "\ue000ICAE_MARKER_{}\ue001"
_SPLIT = re.compile("(\ue000ICAE_(?:CONTEXT|MARKER)_[a-z0-9]+\ue001)")



def context_slot(index: int) -> str:
    """The string to write in a message where context ``index`` goes."""
    return _CTX.format(index)


def marker_slot(kind: str) -> str:
    if kind not in MARKERS:
        raise ValueError(f"unknown marker {kind!r}; expected one of {MARKERS}")
    return _MARK.format(kind)


@dataclass(frozen=True)
class Text:
    ids: tuple[int, ...]
    train: bool = False


@dataclass(frozen=True)
class Context:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Marker:
    kind: str


Piece = Text | Context | Marker


@dataclass
class PromptBuilder:
    tokenizer: object
    _has_template: bool = field(init=False)

    def __post_init__(self) -> None:
        self._has_template = bool(getattr(self.tokenizer, "chat_template", None))

    # -- token helpers ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def eos_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [] if eos is None else [eos]

    def stop_token_ids(self) -> list[int]:
        """EOS plus the template's end-of-turn token, read off a rendered assistant turn."""
        stops = set(self.eos_ids)
        if self._has_template:
            tail = self._assistant_suffix()
            ids = self.encode(tail.strip()) if tail.strip() else []
            if len(ids) == 1:
                stops.add(ids[0])
        return sorted(stops)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if self._has_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                enable_thinking=False)
        out = []
        for msg in messages:
            if msg["role"] == "system":
                out.append(f"{msg['content']}\n\n")
            elif msg["role"] == "user":
                out.append(f"User: {msg['content']}\n\n")
            else:
                eos = self.tokenizer.eos_token or ""
                out.append(f"Assistant: {msg['content']}{eos}\n\n")
        if add_generation_prompt:
            out.append("Assistant:")
        return "".join(out)

    def _assistant_suffix(self) -> str:
        """What the template writes after an assistant answer (end-of-turn and the like)."""
        probe = "\ue002"
        msgs = [{"role": "user", "content": "x"}]
        prompt = self._render(msgs, True)
        full = self._render(msgs + [{"role": "assistant", "content": probe}], False)
        if full.startswith(prompt) and probe in full[len(prompt):]:
            return full[len(prompt):].split(probe, 1)[1]
        return self.tokenizer.eos_token or ""

    def target_text(self, messages: list[dict], answer: str) -> str:
        """The exact text the template writes for ``answer`` as the next assistant turn."""
        prompt = self._render(messages, True)
        full = self._render(messages + [{"role": "assistant", "content": answer}], False)
        if full.startswith(prompt):
            return full[len(prompt):]
        return answer + (self.tokenizer.eos_token or "")

    def _split(self, rendered: str, contexts: Sequence[Sequence[int]]) -> list[Piece]:
        pieces: list[Piece] = []
        for part in _SPLIT.split(rendered):
            if not part:
                continue
            if part.startswith("\ue000ICAE_CONTEXT_"):
                idx = int(part[len("\ue000ICAE_CONTEXT_"):-1])
                pieces.append(Context(tuple(contexts[idx])))
            elif part.startswith("\ue000ICAE_MARKER_"):
                pieces.append(Marker(part[len("\ue000ICAE_MARKER_"):-1]))
            else:
                ids = self.encode(part)
                if ids:
                    pieces.append(Text(tuple(ids)))
        return pieces

    # -- layouts ------------------------------------------------------------------------
    def autoencoding(self, context: Sequence[int]) -> list[Piece]:
        return [Context(tuple(context)), Marker("ae"),
                Text(tuple(context) + tuple(self.eos_ids), train=True)]

    def autoencoding_prompt(self, context: Sequence[int]) -> list[Piece]:
        return [Context(tuple(context)), Marker("ae")]

    def language_modelling(self, context: Sequence[int], continuation: Sequence[int]
                           ) -> list[Piece]:
        return [Context(tuple(context)), Marker("lm"), Text(tuple(continuation), train=True)]

    def recall(self, context: Sequence[int], prompt: Sequence[int], target: Sequence[int]
               ) -> list[Piece]:
        """The memory, the [RECALL] marker, ``prompt`` (tokens quoted from the context) and
        ``target`` (the tokens that follow them there) as the target."""
        return [Context(tuple(context)), Marker("recall"), Text(tuple(prompt)),
                Text(tuple(target), train=True)]

    def chat(self, messages: list[dict], contexts: Sequence[Sequence[int]] = (),
             answer: str | None = None) -> list[Piece]:
        """Render ``messages`` (whose contents may hold :func:`context_slot` /
        :func:`marker_slot` strings) as a generation prompt, plus the answer as a target."""
        pieces = self._split(self._render(messages, True), contexts)
        if answer is not None:
            pieces.append(Text(tuple(self.encode(self.target_text(messages, answer))),
                               train=True))
        return pieces

    def prefix_stable(self, messages: list[dict],
                      train_roles: tuple[str, ...] = ("assistant",)) -> bool:
        """Whether the template renders ``messages`` as one growing string: for every turn
        of ``train_roles``, the generation prompt before it extends the rendering up to the
        previous such turn, and the rendering with it extends that prompt. ChatML, Mistral
        and Llama-3 templates are; Qwen3's is not once there are two assistant turns (it
        writes the empty ``<think>`` block only on assistant turns after the last user
        message, so the next user message re-renders the previous turn without it)."""
        return self._turn_renderings(messages, train_roles) is not None

    def _turn_renderings(self, messages, train_roles):
        """``(index, generation prompt before the turn, rendering with the turn)`` for every
        ``train_roles`` turn, or None when the template is not prefix-stable there."""
        out, rendered_so_far = [], ""
        for i, msg in enumerate(messages):
            if msg["role"] in train_roles:
                prompt = self._render(messages[:i], True)
                full = self._render(messages[: i + 1], False)
                if not (full.startswith(prompt) and prompt.startswith(rendered_so_far)):
                    return None
                out.append((i, prompt, full))
                rendered_so_far = full
        return out

    def _turn_pieces(self, messages, contexts, train_roles, first_trained_message):
        """Pieces up to the end of the last ``train_roles`` turn, each such turn a run of
        its own (the template's rendering of it as the final turn), and the rendered text
        they cover; None when the template is not prefix-stable there."""
        turns = self._turn_renderings(messages, train_roles)
        if turns is None:
            return None
        pieces: list[Piece] = []
        rendered_so_far = ""
        for i, prompt, full in turns:
            pieces += self._split(prompt[len(rendered_so_far):], contexts)
            target = self.encode(full[len(prompt):])
            pieces.append(Text(tuple(target), train=i >= first_trained_message))
            rendered_so_far = full
        return pieces, rendered_so_far

    def conversation(self, messages: list[dict], contexts: Sequence[Sequence[int]] = (),
                     train_roles: tuple[str, ...] = ("assistant",),
                     first_trained_message: int = 0) -> list[Piece]:
        """A whole conversation as one sequence; assistant turns from
        ``first_trained_message`` on are targets. Each assistant turn is tokenized on its
        own, as the template renders it after the generation prompt, so the sequence up to
        a target is exactly that turn's :meth:`conversation_prompt`. Only a
        :meth:`prefix_stable` template allows one sequence; for others (Qwen3) use one
        sequence per target turn (:func:`icae.models.task_prompts.trajectory_sequences`)."""
        turns = self._turn_pieces(messages, contexts, train_roles, first_trained_message)
        if turns is None:
            raise ValueError(
                "chat template is not prefix-stable (it re-renders earlier turns when a "
                "turn is added, as Qwen3's does with <think> blocks): the conversation "
                "cannot be one sequence; build one sequence per target turn with "
                "icae.models.task_prompts.trajectory_sequences")
        pieces, rendered_so_far = turns
        tail = self._render(messages, False)
        if tail.startswith(rendered_so_far) and len(tail) > len(rendered_so_far):
            pieces += self._split(tail[len(rendered_so_far):], contexts)
        return pieces

    def conversation_prompt(self, messages: list[dict], contexts: Sequence[Sequence[int]] = (),
                            answer: str | None = None,
                            train_roles: tuple[str, ...] = ("assistant",)) -> list[Piece]:
        """The generation prompt after ``messages`` (plus ``answer`` as the target), laid
        out as :meth:`conversation` lays out a whole conversation: earlier assistant turns
        tokenized on their own, as the model produced them. That is what the model was
        trained on, and it differs from tokenizing the rendered history in one piece for
        SentencePiece tokenizers (Mistral starts every run with a word boundary). Where the
        template re-renders earlier turns (Qwen3) there is no such layout and the prompt
        is the template's rendering of the history (:meth:`chat`)."""
        turns = self._turn_pieces(messages, contexts, train_roles, len(messages))
        prompt = self._render(messages, True)
        if turns is None or not prompt.startswith(turns[1]):
            return self.chat(messages, contexts, answer=answer)
        pieces, rendered_so_far = turns
        pieces += self._split(prompt[len(rendered_so_far):], contexts)
        if answer is not None:
            pieces.append(Text(tuple(self.encode(self.target_text(messages, answer))),
                               train=True))
        return pieces


def compressed_conversation(messages: list[dict], encode) -> tuple[list[dict], list[list[int]]]:
    """Agent-trajectory layout: each message flagged ``compress`` (an observation) becomes a
    context slot holding its tokens; everything else stays text. ICAE compresses those
    contexts (memory accumulates across turns); the baseline reads them as text."""
    out, contexts = [], []
    for msg in messages:
        if msg.get("compress"):
            out.append({"role": msg["role"], "content": context_slot(len(contexts))})
            contexts.append(encode(msg["content"]))
        else:
            out.append({"role": msg["role"], "content": msg["content"]})
    return out, contexts

