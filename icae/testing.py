"""Tiny random models and a tiny chat tokenizer, for tests and smoke runs (no downloads)."""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """The quick brown fox jumps over the lazy dog. A memory slot holds a summary of
the context. Language models read text and answer questions about it. Compression turns
long contexts into a few vectors. def function(x): return x + 1 # code and prose alike.
Alice was beginning to get very tired of sitting by her sister on the bank.
It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife. 0123456789 ()[]{}<>=+-*/.,;:!?'"_ """


def tiny_tokenizer(vocab_size: int = 400, chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(arch: str = "llama", vocab_size: int = 512, hidden_size: int = 32,
               layers: int = 2, seed: int = 0, tie: bool = False,
               initializer_range: float = 0.2):
    """A random model. ``initializer_range`` is larger than HF's 0.02 so that a frozen
    random decoder can still express peaked distributions (with 0.02 its logits span well
    under one nat and no amount of memory training moves the loss)."""
    import torch
    from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig,
                              Qwen2Config, Qwen3Config)

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, tie_word_embeddings=tie,
                  initializer_range=initializer_range)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config,
           "mistral": MistralConfig}[arch]
    extra = {"head_dim": hidden_size // 4} if arch == "qwen3" else {}
    config = cls(**common, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.float().eval()


def save_tiny_model_dir(path: str | Path, arch: str = "llama", hidden_size: int = 64,
                        layers: int = 2, seed: int = 0) -> Path:
    """A complete local model directory (weights, config, tokenizer with chat template)."""
    path = Path(path)
    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok), hidden_size=hidden_size, layers=layers,
                       seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Interrupted(Exception):
    """Raised by :func:`interrupt_after` in place of a kill."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}")
        self.step = step


def interrupt_after(steps: int):
    """A Trainer callback that interrupts training once ``steps`` optimizer steps are done
    (their logging and checkpointing included), as a kill before the next step would:
    :func:`icae.training.trainer.train` writes no final checkpoint and the run resumes from
    its last periodic one. Raises :class:`Interrupted`."""
    from transformers import TrainerCallback

    class InterruptAfter(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                raise Interrupted(state.global_step)

    return InterruptAfter()
