"""Prompt layouts come from each tokenizer's own chat template."""

import pytest

from icae.models.task_prompts import qa_messages
from icae.models.templates import (Context, Marker, PromptBuilder, Text, context_slot,
                                   marker_slot)
from tests.conftest import shared_path

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _flatten_as_text(pieces):
    ids = []
    for p in pieces:
        if isinstance(p, (Text, Context)):
            ids += p.ids
    return ids


def _tokenizer(kind):
    from transformers import AutoTokenizer

    from icae.testing import tiny_tokenizer

    if kind in ("qwen3", "mistral"):
        tok = AutoTokenizer.from_pretrained(str(shared_path("assets", "tokenizers", kind)))
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token
        return tok
    tok = tiny_tokenizer(chat_template=kind == "chatml")
    if kind == "llama3":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": [
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
        tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.mark.parametrize("kind", ["qwen3", "mistral", "llama3", "chatml", "none"])
def test_chat_prompt_matches_the_template(kind):
    tok = _tokenizer(kind)
    pb = PromptBuilder(tok)
    context = "The quick brown fox jumps over the lazy dog."
    question = "What jumps?"
    ctx_ids = pb.encode(context)
    msgs = qa_messages(question, "Answer: ", compressed=True)
    pieces = pb.chat(msgs, [ctx_ids], answer="the fox")
    kinds = [type(p).__name__ for p in pieces]
    assert kinds.count("Context") == 1 and kinds.count("Marker") == 1
    assert pieces[-1].train and not any(p.train for p in pieces[:-1] if isinstance(p, Text))
    # The plain-text view, with the context in place of the memory, decodes to exactly
    # what the tokenizer's template renders for the same conversation.
    plain = [{"role": "user", "content": f"{context}Answer: {question}"}]
    if pb._has_template:
        expected = tok.apply_chat_template(plain + [{"role": "assistant", "content": "the fox"}],
                                           tokenize=False, enable_thinking=False)
    else:
        expected = f"User: {context}Answer: {question}\n\nAssistant: the fox{tok.eos_token}\n\n"
    got = tok.decode(_flatten_as_text(pieces), skip_special_tokens=False)
    if kind == "mistral":
        # SentencePiece starts every separately tokenized run with a word boundary, as the
        # original ICAE Mistral prompts did; only whitespace may differ.
        assert got.replace(" ", "") == expected.replace(" ", "")
    else:
        assert got == expected


def test_qwen3_thinking_disabled_and_turn_end_is_a_stop_token():
    tok = _tokenizer("qwen3")
    pb = PromptBuilder(tok)
    text = tok.decode(_flatten_as_text(pb.chat([{"role": "user", "content": "hi"}])))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.convert_tokens_to_ids("<|im_end|>") in pb.stop_token_ids()


def test_mistral_layout_has_bos_and_inst():
    tok = _tokenizer("mistral")
    pb = PromptBuilder(tok)
    pieces = pb.chat([{"role": "user", "content": context_slot(0) + marker_slot("ft") + "Q"}],
                     [[1000, 1001]], answer="A")
    assert pieces[0].ids[0] == tok.bos_token_id
    assert isinstance(pieces[1], Context) and isinstance(pieces[2], Marker)
    assert tok.decode(pieces[-1].ids) == "A</s>"


def test_conversation_marks_every_assistant_turn():
    tok = _tokenizer("chatml")
    pb = PromptBuilder(tok)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"},
            {"role": "assistant", "content": "ls"}, {"role": "user", "content": context_slot(0)},
            {"role": "assistant", "content": "cat x"}]
    pieces = pb.conversation(msgs, [[5, 6, 7]], first_trained_message=3)
    trained = [tok.decode(p.ids) for p in pieces if isinstance(p, Text) and p.train]
    assert trained == ["cat x<|im_end|>\n"]
    full = tok.apply_chat_template(
        [dict(m, content=m["content"].replace(context_slot(0), tok.decode([5, 6, 7])))
         for m in msgs], tokenize=False)
    assert tok.decode(_flatten_as_text(pieces)) == full


def test_unknown_marker_is_rejected():
    with pytest.raises(ValueError, match="unknown marker"):
        marker_slot("xx")
