"""Training on tiny random models: every stage, resume, batching, NaN handling."""

import json
import math

import pytest
import torch

from icae.config import load_config
from icae.models import build_model
from icae.models.checkpoint import read_meta

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. The quick brown fox jumps over the lazy dog. "
        "Alice was beginning to get very tired of sitting by her sister on the bank. ")


QUESTIONS = [("Who was tired?", "Alice"), ("What jumps?", "The quick brown fox"),
             ("What is he in want of?", "A wife"), ("Where did she sit?", "The bank")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from icae.data.prepared import split_path, write_records, write_token_documents
    from icae.testing import save_tiny_model_dir, tiny_tokenizer

    root = tmp_path_factory.mktemp("train")
    save_tiny_model_dir(root / "model", hidden_size=32)
    tok = tiny_tokenizer()
    ids = tok(TEXT * 3, add_special_tokens=False)["input_ids"]
    prep = root / "prepared"

    def write(name, split, rows):
        write_records(split_path(prep / name, split), rows)

    pre = []
    for i in range(8):
        s = 3 * i
        pre.append({"id": f"p{i}", "task": "ae" if i % 2 == 0 else "lm", "source": "t",
                    "context_ids": ids[s:s + 24],
                    "continuation_ids": [] if i % 2 == 0 else ids[s + 24:s + 36]})
    # pre-training: documents to draw training spans from, span records to evaluate on
    write_token_documents(split_path(prep / "pretrain", "train"),
                          [ids[3 * i:3 * i + 60] for i in range(8)], len(tok))
    write("pretrain", "eval", pre)
    for split in ("train", "eval"):
        # four different questions: a shuffled order is visible in the weights
        write("squad", split, [{"id": f"q{i}", "title": "t", "context": TEXT,
                                "question": q, "answers": [a, a.lower()]}
                               for i, (q, a) in enumerate(QUESTIONS)])
        write("repoqa", split, [{"id": "r0", "language": "python", "repo": "x",
                                 "context": "def f(x):\n    return x + 1\n" * 3,
                                 "description": "adds one", "needle_name": "f",
                                 "needle_code": "def f(x):\n    return x + 1",
                                 "position_ratio": 0.5, "context_tokens": 40}])
        write("trajectories", split, [{"id": "t0", "cut": {}, "messages": [
            {"role": "system", "content": "You are an agent.", "compress": False},
            {"role": "user", "content": "Fix the bug.", "compress": False},
            {"role": "assistant", "content": "ls", "compress": False},
            {"role": "user", "content": TEXT, "compress": True},
            {"role": "assistant", "content": "cat file", "compress": False},
            {"role": "user", "content": "short", "compress": False},
            {"role": "assistant", "content": "done", "compress": False}]}])
    return root


def cfg_for(workdir, tmp_path, *overrides):
    base = [f"model.model_dir={workdir / 'model'}", f"model.base_model={workdir / 'model'}",
            "model.mem_size=4", "model.mean_compression_rate=2", "model.lora_r=4",
            "model.lora_alpha=8", "model.lora_dropout=0.0", "model.max_encoder_tokens=64",
            f"data.prepared_dir={workdir / 'prepared'}", "data.pretrain.min_len=24",
            f"output_root={tmp_path}",
            "run_name=t", "pretrain.max_steps=2", "finetune.max_steps=2",
            "pretrain.logging_steps=1", "finetune.logging_steps=1", "pretrain.progress=false",
            "finetune.progress=false", "pretrain.learning_rate=1e-2",
            "finetune.learning_rate=1e-2"]
    return load_config(None, base + list(overrides))


def test_pretrain_with_recall_logs_its_loss_and_trains_its_marker(workdir, tmp_path):
    from icae.training.run import pretrain

    cfg = cfg_for(workdir, tmp_path, "data.pretrain.lm_ratio=0.25",
                  "data.pretrain.recall_ratio=0.5", "data.pretrain.recall_prompt_len=6",
                  "data.pretrain.recall_target_len=4", "pretrain.per_device_train_batch_size=8")
    pretrain(cfg)
    ckpt = tmp_path / "t" / "pretrain"
    assert read_meta(ckpt)["trained_markers"] == ["ae", "lm", "recall"]
    header = (ckpt / "log.csv").read_text().splitlines()[0].split(",")
    assert "recall_loss" in header


def test_pretrain_then_every_finetune(workdir, tmp_path):
    from icae.training.run import finetune, pretrain

    cfg = cfg_for(workdir, tmp_path, "pretrain.eval_steps=2", "pretrain.ae_bleu_samples=2")
    meta = pretrain(cfg)
    ckpt = tmp_path / "t" / "pretrain"
    assert meta["global_step"] == 2
    assert {"trained.safetensors", "checkpoint.json", "config.yaml", "log.csv"} <= {
        p.name for p in ckpt.iterdir()}
    log_text = (ckpt / "log.csv").read_text()
    for col in ("ae_loss", "lm_loss", "trained_tokens", "eval_loss", "eval_ae_bleu1",
                "eval_ae_bleu4"):
        assert col in log_text.splitlines()[0], col
    assert (tmp_path / "t" / "pretrain.resume").is_dir()  # resume state lives outside
    assert read_meta(ckpt)["trained_markers"] == ["ae", "lm"]  # pre-training never uses [FT]

    for dataset in ("squad", "repoqa", "trajectories"):
        for model_type in ("icae", "llm"):
            init = [f"finetune.init_checkpoint={ckpt}"] if model_type == "icae" else []
            ft = cfg_for(workdir, tmp_path, f"finetune.dataset={dataset}",
                         f"model.model_type={model_type}", *init)
            meta = finetune(ft)
            out = tmp_path / "t" / f"finetune-{dataset}-{model_type}"
            assert read_meta(out)["model_type"] == model_type
            # squad / repoqa train [FT] on top of the pre-trained markers; trajectories
            # have no marker; the LLM has none at all
            assert read_meta(out)["trained_markers"] == (
                [] if model_type == "llm" else
                ["ae", "lm"] if dataset == "trajectories" else ["ae", "ft", "lm"])
            assert math.isfinite(meta["train_loss"])
            # the checkpoint loads for evaluation
            build_model(ft.model, checkpoint=out)


def _trained(model):
    return {k: v.clone() for k, v in model.trainable_state_dict().items()}


def _weights_around_finetune(workdir, tmp_path, *overrides):
    """A pre-training with a decoder adapter, then 3 SQuAD fine-tuning steps from it with
    ``overrides``: (pre-trained weights, fine-tuned weights, mem_size)."""
    from icae.models.checkpoint import read_weights
    from icae.training.run import finetune, pretrain

    dec = ["model.train_decoder=true", "model.lora_dropout=0.0"]
    pretrain(cfg_for(workdir, tmp_path, *dec))
    ckpt = tmp_path / "t" / "pretrain"
    ft = cfg_for(workdir, tmp_path, *dec, "finetune.dataset=squad", "finetune.max_steps=3",
                 f"finetune.init_checkpoint={ckpt}", "finetune.learning_rate=1e-2",
                 "finetune.embedding_learning_rate=1e-2", *overrides)
    finetune(ft)
    return (read_weights(ckpt / "trained.safetensors"),
            read_weights(tmp_path / "t" / "finetune-squad-icae" / "trained.safetensors"),
            ft.model.mem_size)


def test_finetune_with_the_encoder_frozen_keeps_the_memory(workdir, tmp_path):
    # finetune.freeze_encoder through the finetune command: the encoder adapter and the
    # memory-slot rows stay as the init checkpoint has them; the decoder adapter and the
    # markers (here [FT], trained for the first time) move.
    before, after, m = _weights_around_finetune(workdir, tmp_path,
                                                "finetune.freeze_encoder=true")
    encoder = [k for k in before if "lora_" in k and ".encoder." in k]
    decoder = [k for k in before if "lora_B" in k and ".decoder." in k]
    assert encoder and decoder
    for k in encoder:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(before["extra_embeddings"][:m], after["extra_embeddings"][:m])
    assert not torch.equal(before["extra_embeddings"][m:], after["extra_embeddings"][m:])
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_finetune_with_the_decoder_frozen_trains_the_encoder_side(workdir, tmp_path):
    # finetune.freeze_decoder (ICAE's own fine-tuning): the decoder adapter stays as the
    # init checkpoint has it; the encoder adapter, the memory slots and the markers move.
    before, after, m = _weights_around_finetune(workdir, tmp_path,
                                                "finetune.freeze_decoder=true")
    decoder = [k for k in before if "lora_" in k and ".decoder." in k]
    encoder = [k for k in before if "lora_B" in k and ".encoder." in k]
    assert encoder and decoder
    for k in decoder:
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["extra_embeddings"][:m], after["extra_embeddings"][:m])


def test_freezing_is_for_fine_tuning_and_never_leaves_only_the_markers(workdir, tmp_path):
    with pytest.raises(ValueError, match="pretrain.freeze_encoder"):
        cfg_for(workdir, tmp_path, "pretrain.freeze_encoder=true")
    with pytest.raises(ValueError, match="weight_decay"):
        cfg_for(workdir, tmp_path, "finetune.freeze_encoder=true", "finetune.weight_decay=0.1")
    with pytest.raises(ValueError, match="pretrain.freeze_decoder"):
        cfg_for(workdir, tmp_path, "pretrain.freeze_decoder=true")
    with pytest.raises(ValueError, match="only the markers"):
        cfg_for(workdir, tmp_path, "finetune.freeze_decoder=true",
                "finetune.freeze_encoder=true")


def _run(workdir, tmp_path, dataset="squad", **kw):
    """Train in-process and return the trained parameters."""
    from icae.training.examples import encode_records, load_records
    from icae.testing import Interrupted, interrupt_after
    from icae.training.trainer import train
    from icae.utils import seed_everything

    overrides = [f"{k.replace('__', '.')}={v}" for k, v in kw.items()
                 if k not in ("stop", "lazy")]
    ds = [] if dataset == "pretrain" else [f"finetune.dataset={dataset}"]
    cfg = cfg_for(workdir, tmp_path, *ds, *overrides)
    seed_everything(cfg.seed)
    model = build_model(cfg.model)
    # the pre-training train split holds documents; its eval split holds span records
    split = "eval" if dataset == "pretrain" else "train"
    if kw.get("lazy"):  # what icae finetune trains on
        from icae.training.examples import LazyExamples

        examples = LazyExamples(model, cfg, dataset, load_records(cfg, dataset, split), 512)
    else:
        examples, _ = encode_records(model, cfg, dataset, load_records(cfg, dataset, split),
                                     512)
    stop = [interrupt_after(kw["stop"])] if kw.get("stop") else None
    try:
        meta = train(model, examples, [], cfg.finetune, output_dir=tmp_path / "out",
                     resume_dir=tmp_path / "resume", seed=cfg.seed, config_text="",
                     callbacks=stop)
    except Interrupted as stopped:
        meta = {"interrupted_at": stopped.step}
    return model, meta


def test_overfitting_a_handful_drives_the_loss_down(workdir, tmp_path):
    model, meta = _run(workdir, tmp_path, dataset="pretrain", finetune__max_steps=30,
                       finetune__per_device_train_batch_size=8, finetune__learning_rate=3e-2)
    rows = [json.loads(line) for line in (tmp_path / "resume" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 1.0, losses


def test_resume_after_interruption_matches_a_straight_run(workdir, tmp_path):
    # Straight: 6 steps. Interrupted: killed after step 4 with a checkpoint at step 3,
    # then resumed to 6. Same data order, optimizer and RNG state: equal to 1e-6.
    common = dict(finetune__max_steps=6, finetune__save_steps=3,
                  finetune__per_device_train_batch_size=2, model__lora_dropout=0.1)
    straight, _ = _run(workdir, tmp_path / "a", **common)
    _, meta = _run(workdir, tmp_path / "b", stop=4, **common)
    assert meta == {"interrupted_at": 4}
    assert (tmp_path / "b" / "resume" / "checkpoint-3").is_dir()
    assert not (tmp_path / "b" / "out").exists()
    resumed, meta = _run(workdir, tmp_path / "b", **common)
    assert meta["global_step"] == 6
    a, b = _trained(straight), _trained(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_examples_encoded_when_read_train_exactly_as_the_eager_list(workdir, tmp_path):
    """The Trainer's seeded shuffle sees the same dataset: same batches, same weights;
    and a run interrupted and resumed on the lazy dataset ends there too."""
    common = dict(finetune__max_steps=4, finetune__save_steps=2,
                  finetune__per_device_train_batch_size=2, dataset="squad")
    eager, _ = _run(workdir, tmp_path / "a", **common)
    lazy, _ = _run(workdir, tmp_path / "b", lazy=True, **common)
    _, meta = _run(workdir, tmp_path / "c", lazy=True, stop=3, **common)
    assert meta == {"interrupted_at": 3}
    resumed, _ = _run(workdir, tmp_path / "c", lazy=True, **common)
    a, b, c = _trained(eager), _trained(lazy), _trained(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a[k], c[k], atol=1e-6, rtol=0)


def test_batch_of_four_equals_four_accumulated_batches_of_one(workdir, tmp_path):
    # One optimizer step each; the loss is normalised by the labelled tokens of the whole
    # accumulated batch in both cases. float32: parameters agree to 1e-5. The accumulated
    # run also cuts its LM head + loss into 5-token chunks (recomputed in the backward
    # pass): a speed/memory knob only.
    big, _ = _run(workdir, tmp_path / "a", dataset="pretrain", finetune__max_steps=1,
                  finetune__per_device_train_batch_size=4)
    acc, _ = _run(workdir, tmp_path / "b", dataset="pretrain", finetune__max_steps=1,
                  finetune__per_device_train_batch_size=1,
                  finetune__gradient_accumulation_steps=4, finetune__loss_chunk_tokens=5)
    assert acc.loss_chunk_tokens == 5 and big.loss_chunk_tokens != 5
    la = json.loads((tmp_path / "a" / "resume" / "log.jsonl").read_text().splitlines()[0])
    lb = json.loads((tmp_path / "b" / "resume" / "log.jsonl").read_text().splitlines()[0])
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-4)
    a, b = _trained(big), _trained(acc)
    changed = any((a[k] - _trained(build_model(cfg_for(workdir, tmp_path).model))[k]).abs().max() > 0
                  for k in a if "lora_B" in k)
    assert changed
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(workdir, tmp_path,
                                                                   monkeypatch):
    from icae.models.icae import ICAE
    from icae.training.trainer import NonFiniteLossError

    real = ICAE.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ICAE, "forward", flaky)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        _run(workdir, tmp_path, finetune__max_steps=5, finetune__save_steps=1)
    assert (tmp_path / "resume" / "checkpoint-2").is_dir()
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_of_an_earlier_micro_batch_stops_before_the_optimizer_step(
        workdir, tmp_path, monkeypatch):
    """The losses are read once per optimizer step, with the gradients: a NaN in the first
    of two accumulated micro-batches still stops the run before that step's update, names
    the loss (not the gradient it also spoils) and keeps the state before it."""
    from icae.models.icae import ICAE
    from icae.training.trainer import NonFiniteGradientError, NonFiniteLossError

    real = ICAE.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 5:  # step 3, first of its two micro-batches
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ICAE, "forward", flaky)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 3"
                       ) as info:
        _run(workdir, tmp_path, finetune__max_steps=5, finetune__save_steps=1,
             finetune__per_device_train_batch_size=1, finetune__gradient_accumulation_steps=2)
    assert not isinstance(info.value, NonFiniteGradientError)
    assert calls["n"] == 6  # the step's second micro-batch ran, its update did not
    assert (tmp_path / "resume" / "checkpoint-2").is_dir()
    assert not (tmp_path / "resume" / "checkpoint-3").exists()


def test_training_log_has_no_deprecation_warnings_with_checkpointing(workdir, tmp_path,
                                                                     capsys):
    """Building the model and training (with activation checkpointing, as the paper
    configs do) raises no transformers / peft deprecation warnings, which would otherwise
    repeat in every training log; the log lines carry elapsed time, throughput and ETA,
    and no carriage-return bars."""
    import warnings

    from icae.progress import quiet_third_party_bars
    from icae.training.run import pretrain

    quiet_third_party_bars()  # what the command line does when stderr is a log file

    cfg = cfg_for(workdir, tmp_path, "pretrain.gradient_checkpointing=true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = pretrain(cfg)
    assert meta["global_step"] == 2
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecations, deprecations
    err = capsys.readouterr().err
    assert "\r" not in err
    first = next(line for line in err.splitlines() if line.startswith("[step 1/2]"))
    assert "elapsed " in first and "steps/s" in first and "tok/s" in first and "ETA " in first


def test_training_sets_cudnn_attention_from_its_config_on_cuda(monkeypatch):
    # pytorch/pytorch#196678: cuDNN's SDPA backward returns NaN query gradients for masked
    # batches on Hopper; training passes carry no mask, so cuDNN is on unless
    # cudnn_attention=false turns it off.
    import torch

    from icae.config import TrainingConfig
    from icae.training.trainer import set_cudnn_attention

    assert TrainingConfig().cudnn_attention is True
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: calls.append(on))
    assert set_cudnn_attention(False) is True and set_cudnn_attention(True) is True
    assert calls == [False, True]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set_cudnn_attention(False) is False and calls == [False, True]


def test_pretrain_adopts_an_init_checkpoint_with_zero_steps(workdir, tmp_path):
    """The quickstart's path: a shipped pre-trained checkpoint becomes the pretrain output
    unchanged (max_steps 0), after the same settings check as finetune's init_checkpoint."""
    import shutil

    from icae.models.checkpoint import read_weights
    from icae.training.run import pretrain

    pretrain(cfg_for(workdir, tmp_path / "a"))
    shipped = tmp_path / "shipped"
    shutil.copytree(tmp_path / "a" / "t" / "pretrain", shipped)
    (shipped / "trained.safetensors").unlink()  # shipped folders hold the portable layout
    meta = pretrain(cfg_for(workdir, tmp_path / "b", f"pretrain.init_checkpoint={shipped}",
                            "pretrain.max_steps=0"))
    out = tmp_path / "b" / "t" / "pretrain"
    assert meta["adopted_from"] == str(shipped) and meta["global_step"] == 2
    assert read_meta(out)["trained_markers"] == ["ae", "lm"]
    assert (out / "log.csv").read_text() == (shipped / "log.csv").read_text()
    assert not (tmp_path / "b" / "t" / "pretrain.resume").exists()  # nothing was trained
    a = read_weights(tmp_path / "a" / "t" / "pretrain" / "trained.safetensors")
    b = read_weights(out / "trained.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="model.mem_size=4"):
        pretrain(cfg_for(workdir, tmp_path / "c", f"pretrain.init_checkpoint={shipped}",
                         "pretrain.max_steps=0", "model.mem_size=8"))
    with pytest.raises(ValueError, match="pretrain.max_steps"):
        cfg_for(workdir, tmp_path / "d", "pretrain.max_steps=0")


def test_continuing_with_the_same_seed_and_sources_warns_of_revisited_spans(workdir, tmp_path,
                                                                            caplog):
    """A run from pretrain.init_checkpoint counts its examples from 0, so with the parent's
    seed and documents it draws the parent's spans again (2026-12-07's linspace and 8x
    continuations did): the log says so, and names the key that avoids it."""
    from icae.training.run import pretrain, revisited_spans

    pretrain(cfg_for(workdir, tmp_path / "a"))
    parent = tmp_path / "a" / "t" / "pretrain"
    same = cfg_for(workdir, tmp_path / "b", f"pretrain.init_checkpoint={parent}")
    message = revisited_spans(read_meta(parent), same)
    assert message and "seed" in message and str(read_meta(parent)["examples_seen"]) in message
    assert revisited_spans(read_meta(parent),
                           cfg_for(workdir, tmp_path / "c", f"pretrain.init_checkpoint={parent}",
                                   "seed=7")) is None
    assert revisited_spans({"examples_seen": 8}, same) is None  # no run config: no verdict
    with caplog.at_level("WARNING", logger="icae.training.run"):
        pretrain(same)
    assert any("draws the same spans" in r.getMessage() for r in caplog.records)
    # A grandparent's spans count too: b continued a with a's seed, c continues b with
    # seed 7; a run from c with a's seed (42) would replay a's spans.
    b = tmp_path / "b" / "t" / "pretrain"
    pretrain(cfg_for(workdir, tmp_path / "c", f"pretrain.init_checkpoint={b}", "seed=7"))
    child = read_meta(tmp_path / "c" / "t" / "pretrain")
    assert [h["seed"] for h in child["span_history"]] == [42, 42]
    assert revisited_spans(child, cfg_for(workdir, tmp_path / "d", "seed=42")) is not None
    assert revisited_spans(child, cfg_for(workdir, tmp_path / "d", "seed=7")) is not None
    assert revisited_spans(child, cfg_for(workdir, tmp_path / "d", "seed=8")) is None


@pytest.mark.slow
def test_pretrain_with_compiled_layers_evaluates_and_decodes(workdir, tmp_path):
    # pretrain.compile_layers through the whole pretrain command: the compiled blocks serve
    # training steps, the periodic evaluation loss and the AE BLEU decoding (other shapes,
    # no gradients, a KV cache), and the losses stay what eager training gives.
    from icae.training.run import pretrain

    metas = []
    for compiled in ("false", "true"):
        cfg = cfg_for(workdir, tmp_path / compiled, "pretrain.eval_steps=2",
                      "pretrain.ae_bleu_samples=2", f"pretrain.compile_layers={compiled}")
        metas.append(pretrain(cfg))
        log_text = (tmp_path / compiled / "t" / "pretrain" / "log.csv").read_text()
        assert "eval_ae_bleu1" in log_text.splitlines()[0]
    assert metas[1]["global_step"] == metas[0]["global_step"] == 2
    assert metas[1]["train_loss"] == pytest.approx(metas[0]["train_loss"], rel=1e-4)


def _squad_records(n_contexts=8, per_context=2):
    words = TEXT.split()
    return [{"id": f"c{c}q{q}", "title": "t", "context": " ".join(words[c:c + 12 + c]),
             "question": f"Question {q}?", "answers": [words[c + q]]}
            for c in range(n_contexts) for q in range(per_context)]


def test_finetune_ae_ratio_adds_autoencoding_of_drawn_contexts(workdir, tmp_path):
    from icae.models.objectives import Objective
    from icae.training.examples import LazyExamples, encode_records

    records = _squad_records()
    cfg0 = cfg_for(workdir, tmp_path)
    model = build_model(cfg0.model)
    plain, _ = encode_records(model, cfg0, "squad", records, 512)
    assert len(plain) == len(records) and all(e.task == Objective.FT for e in plain)

    everything, stats = encode_records(model, cfg_for(workdir, tmp_path, "finetune.ae_ratio=1"),
                                       "squad", records, 512)
    assert stats.autoencoding == len(records) == len(everything) - len(plain)
    for qa, ae in zip(plain, everything[1::2]):
        context = qa.contexts[0][0]
        assert ae.task == Objective.AE and ae.contexts[0][0] == context
        # the target is the context itself (then EOS), after the [AE] marker
        assert [t for t in ae.labels if t != -100][:len(context)] == list(context)

    half = cfg_for(workdir, tmp_path, "finetune.ae_ratio=0.5")
    some, stats = encode_records(model, half, "squad", records, 512)
    drawn = [e.contexts[0][0] for e in some if e.task == Objective.AE]
    assert 0 < stats.autoencoding < len(records)
    # a context two records share is drawn for both or for neither
    assert all(drawn.count(c) == 2 for c in drawn)
    # the lazy set (what training reads) gives the same examples, in the same order
    lazy = LazyExamples(model, half, "squad", records, 512)
    assert len(lazy) == len(some) and lazy.stats.autoencoding == stats.autoencoding
    assert all(lazy[k] == some[k] for k in range(len(some)))
    # evaluation sets stay the task's own
    assert len(LazyExamples(model, half, "squad", records, 512, training=False)) == len(records)
    # another seed draws other contexts
    other, _ = encode_records(model, cfg_for(workdir, tmp_path, "finetune.ae_ratio=0.5",
                                             "seed=7"), "squad", records, 512)
    assert [e.task for e in other] != [e.task for e in some]

    # the plain LLM has no memory: nothing is added
    llm_cfg = cfg_for(workdir, tmp_path, "model.model_type=llm", "finetune.ae_ratio=1")
    llm_examples, stats = encode_records(build_model(llm_cfg.model), llm_cfg, "squad",
                                         records, 512)
    assert len(llm_examples) == len(records) and stats.autoencoding == 0


def test_ae_ratio_is_for_fine_tuning(workdir, tmp_path):
    with pytest.raises(ValueError, match="pretrain.ae_ratio"):
        cfg_for(workdir, tmp_path, "pretrain.ae_ratio=0.5")


def test_train_diagnostics_profiles_a_window_of_the_real_training_loop(workdir, tmp_path,
                                                                       monkeypatch):
    """benchmarks/train_diagnostics.py runs `icae pretrain` with its profiler window on the
    Trainer's own loop (the sync audit needs CUDA, so on CPU its window stays empty)."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_diagnostics.py"
    spec = importlib.util.spec_from_file_location("train_diagnostics", script)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    overrides = [a for a in (
        f"model.model_dir={workdir / 'model'}", f"model.base_model={workdir / 'model'}",
        "model.mem_size=4", "model.mean_compression_rate=2", "model.lora_r=4",
        "model.lora_alpha=8", f"data.prepared_dir={workdir / 'prepared'}",
        "data.pretrain.min_len=24", f"output_root={tmp_path}", "run_name=t",
        "pretrain.max_steps=4", "pretrain.progress=false")]
    out = tmp_path / "diag"
    monkeypatch.setattr(sys, "argv", ["train_diagnostics.py", "--out", str(out),
                                      "--sync-steps", "1:2", "--profile-steps", "1:3", "--",
                                      "pretrain", *overrides])
    assert diag.main() == 0
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary["profile_steps"] == [1, 3] and summary["profile_wall_s"] > 0
    table = (out / "profile.txt").read_text()
    assert table.startswith("steps [1, 3]: wall ") and "Self CPU time total" in table
    assert "aten::mm" in table or "aten::addmm" in table or "aten::linear" in table
    assert (tmp_path / "t" / "pretrain" / "checkpoint.json").is_file()  # the run itself ended


def test_busy_seconds_counts_overlapping_kernels_once():
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_diagnostics.py"
    spec = importlib.util.spec_from_file_location("train_diagnostics", script)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(a, b, kind=cuda):
        return SimpleNamespace(device_type=kind, time_range=SimpleNamespace(start=a, end=b))

    events = [ev(0, 10), ev(5, 20), ev(30, 40), ev(0, 1000, cpu), ev(35, 36)]
    assert diag.busy_seconds(events) == pytest.approx(30e-6)


def test_train_diagnostics_names_a_bad_step_window():
    import argparse
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_diagnostics.py"
    spec = importlib.util.spec_from_file_location("train_diagnostics", script)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    assert diag._window("8:10") == (8, 10)
    for bad, words in (("8", "FIRST:END"), ("a:b", "FIRST:END"), ("10:8", "empty"),
                       ("-1:2", "negative")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            diag._window(bad)


def test_pretrain_groups_spans_by_length_and_finetune_refuses_it(workdir, tmp_path, monkeypatch):
    from icae.training import spans
    from icae.training.run import finetune, pretrain

    seen = []
    original = spans.LengthGroupedOrder.__iter__

    def recording(self):
        for i in original(self):
            seen.append(i)
            yield i

    monkeypatch.setattr(spans.LengthGroupedOrder, "__iter__", recording)
    cfg = cfg_for(workdir, tmp_path, "pretrain.length_grouping_steps=2",
                  "pretrain.per_device_train_batch_size=2", "pretrain.max_steps=4",
                  "data.pretrain.len_jitter=0.5")
    meta = pretrain(cfg)
    assert meta["global_step"] == 4 and math.isfinite(meta["train_loss"])
    assert seen[:8] != list(range(8)) and sorted(seen[:8]) == list(range(8))
    with pytest.raises(ValueError, match="finetune.length_grouping_steps=2"):
        finetune(cfg_for(workdir, tmp_path / "ft", "finetune.dataset=squad",
                         "finetune.length_grouping_steps=2"))
