import pytest
import torch

from icae.models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import make_icae


def test_round_trip(tiny_tok, tmp_path):
    a = make_icae(tiny_tok, seed=0)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    save_checkpoint(a, tmp_path / "ckpt", config_text="run_name: x\n")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["checkpoint.json", "config.yaml", "embeddings.safetensors", "peft",
                     "tokenizer", "trained.safetensors"]
    b = make_icae(tiny_tok, seed=0)
    meta = load_checkpoint(b, tmp_path / "ckpt")
    assert meta["mem_size"] == 4
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    # only trained parameters are stored: far fewer than the base model's
    from safetensors.torch import load_file
    stored = load_file(str(tmp_path / "ckpt" / "trained.safetensors"))
    assert sum(t.numel() for t in stored.values()) < sum(p.numel() for p in a.base.parameters())
    assert all("lora_" in k or k == "extra_embeddings" for k in stored)


@pytest.mark.parametrize("change, needle", [
    (dict(mem_size=8), "mem_size is 4 in the checkpoint but 8 here"),
    (dict(lora_r=8), "lora_r"),
    (dict(model_type="llm"), "model_type"),
    (dict(train_decoder=True), "train_decoder"),
])
def test_mismatch_errors(tiny_tok, tmp_path, change, needle):
    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    kw = dict(mem_size=4)
    kw.update(change)
    mem = kw.pop("mem_size")
    lora_r = kw.pop("lora_r", None)
    other = make_icae(tiny_tok, mem_size=mem, **kw) if lora_r is None else None
    if lora_r is not None:
        from icae.config import ModelConfig
        from icae.models import build_model
        from icae.testing import tiny_model
        other = build_model(ModelConfig(mem_size=4, mean_compression_rate=2, lora_r=lora_r),
                            tiny_model("llama", vocab_size=len(tiny_tok)), tiny_tok)
    with pytest.raises(ValueError, match=needle):
        load_checkpoint(other, tmp_path / "ckpt")


def test_different_base_model_is_named(tiny_tok, tmp_path):
    from icae.config import ModelConfig
    from icae.models import build_model
    from icae.testing import tiny_model

    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    wider = build_model(ModelConfig(mem_size=4, mean_compression_rate=2, lora_r=4),
                        tiny_model("llama", vocab_size=len(tiny_tok), hidden_size=64), tiny_tok)
    with pytest.raises(ValueError, match="hidden_size is 32 in the checkpoint but 64"):
        load_checkpoint(wider, tmp_path / "ckpt")
    qwen = build_model(ModelConfig(mem_size=4, mean_compression_rate=2, lora_r=4),
                       tiny_model("qwen2", vocab_size=len(tiny_tok)), tiny_tok)
    with pytest.raises(ValueError, match="base_architecture"):
        load_checkpoint(qwen, tmp_path / "ckpt")


def test_missing_checkpoint(tiny_tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(make_icae(tiny_tok), tmp_path / "nothing")


@pytest.mark.parametrize("change, needle", [
    (dict(lora_alpha=16), "lora_alpha is 8 in the checkpoint but 16"),
    (dict(layout="default"), "position_layout is 'epl' in the checkpoint but 'default'"),
    (dict(rate=4.0), "mean_compression_rate is 2.0 in the checkpoint but 4.0"),
    (dict(slot_rule="fixed"), "slot_rule is 'proportional' in the checkpoint but 'fixed'"),
    (dict(memory_scale="embedding"), "memory_scale is 'none' in the checkpoint but 'embedding'"),
])
def test_adapter_and_layout_settings_are_checked(tiny_tok, tmp_path, change, needle):
    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    with pytest.raises(ValueError, match=needle):
        load_checkpoint(make_icae(tiny_tok, **change), tmp_path / "ckpt")


def test_check_settings_names_the_key_before_loading(tiny_tok, tmp_path):
    from icae.config import ModelConfig
    from icae.models.checkpoint import check_settings, read_meta

    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    meta = read_meta(tmp_path / "ckpt")
    ok = ModelConfig(mem_size=4, mean_compression_rate=2, lora_r=4, lora_alpha=8)
    check_settings(meta, ok, "ckpt")
    for key, value in [("position_layout", "linspace"), ("mean_compression_rate", 3.0),
                       ("lora_alpha", 32), ("mem_size", 8), ("slot_rule", "fixed")]:
        bad = ModelConfig(mem_size=4, mean_compression_rate=2, lora_r=4, lora_alpha=8)
        setattr(bad, key, value)
        with pytest.raises(ValueError, match=f"model.{key}="):
            check_settings(meta, bad, "ckpt")


def test_same_shape_different_base_weights_fail(tiny_tok, tmp_path):
    save_checkpoint(make_icae(tiny_tok, seed=0), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="another base model.*differ"):
        load_checkpoint(make_icae(tiny_tok, seed=5), tmp_path / "ckpt")


def test_same_base_in_another_dtype_loads(tiny_tok, tmp_path):
    save_checkpoint(make_icae(tiny_tok, seed=0), tmp_path / "ckpt")
    for dtype in (torch.bfloat16, torch.float16):
        model = make_icae(tiny_tok, seed=0)
        model.base.to(dtype)
        model._base_fingerprint = None
        load_checkpoint(model, tmp_path / "ckpt")


def test_old_checkpoint_without_fingerprint_loads_with_a_warning(tiny_tok, tmp_path, caplog):
    import json

    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    meta_path = tmp_path / "ckpt" / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    for key in ("base_fingerprint", "lora_alpha", "position_layout", "mean_compression_rate",
                "slot_rule"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        load_checkpoint(make_icae(tiny_tok, seed=5), tmp_path / "ckpt")
    assert "no base-model fingerprint" in caplog.text


def test_corrupt_weights_and_metadata_are_named(tiny_tok, tmp_path):
    save_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "trained.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="trained.safetensors: cannot read the weights"):
        load_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "checkpoint.json").write_text('{"model_type": "ic')
    with pytest.raises(ValueError, match="checkpoint.json: corrupt checkpoint metadata"):
        load_checkpoint(make_icae(tiny_tok), tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------
# Portable folders: plain peft, embeddings, tokenizer; merged export


def _perturbed(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("train_decoder", [False, True])
def test_plain_peft_loads_each_adapter(tiny_tok, tmp_path, train_decoder):
    import json

    from peft import PeftModel
    from safetensors import safe_open

    from icae.testing import tiny_model

    model = _perturbed(make_icae(tiny_tok, train_decoder=train_decoder))
    save_checkpoint(model, tmp_path / "ckpt")
    ids = torch.tensor([tiny_tok("The quick brown fox jumps.")["input_ids"]])
    for name in model.adapter_names:
        folder = tmp_path / "ckpt" / "peft" / name
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
        plain = PeftModel.from_pretrained(tiny_model("llama", vocab_size=len(tiny_tok), seed=0),
                                          str(folder)).eval()
        with torch.no_grad(), model.adapter(name):
            ours = model.peft(input_ids=ids).logits
            theirs = plain(input_ids=ids).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        without = tiny_model("llama", vocab_size=len(tiny_tok), seed=0)(input_ids=ids).logits
        assert (theirs - without).abs().max() > 1e-3  # the adapter does something
    with safe_open(str(tmp_path / "ckpt" / "embeddings.safetensors"), "pt") as fh:
        assert fh.get_tensor("memory_slots").shape == (4, 32)
        assert fh.get_tensor("markers").shape == (4, 32)
        assert "ae, lm, ft, recall" in fh.metadata()["markers"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "ckpt" / "tokenizer"))
    assert tok.chat_template == tiny_tok.chat_template


@pytest.mark.parametrize("portable", [False, True])
def test_a_checkpoint_from_before_the_recall_marker_loads(tiny_tok, tmp_path, portable):
    """Checkpoints written with three markers ([AE], [LM], [FT]: the shipped one among
    them) load into a model with [RECALL]: their rows are copied, the new marker keeps its
    initial row."""
    from safetensors.torch import load_file, save_file

    from icae.models.checkpoint import trained_markers

    a = _perturbed(make_icae(tiny_tok, train_decoder=True))
    save_checkpoint(a, tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    if portable:
        (ckpt / "trained.safetensors").unlink()
        emb = load_file(str(ckpt / "embeddings.safetensors"))
        save_file({"memory_slots": emb["memory_slots"], "markers": emb["markers"][:3]},
                  str(ckpt / "embeddings.safetensors"))
    else:
        state = load_file(str(ckpt / "trained.safetensors"))
        state["extra_embeddings"] = state["extra_embeddings"][:-1].contiguous()
        save_file(state, str(ckpt / "trained.safetensors"))
    b = make_icae(tiny_tok, train_decoder=True)
    fresh = b.extra_embeddings.detach().clone()
    load_checkpoint(b, ckpt)
    old, new = a.extra_embeddings.detach(), b.extra_embeddings.detach()
    torch.testing.assert_close(new[:-1], old[:-1], rtol=0, atol=0)
    torch.testing.assert_close(new[-1], fresh[-1], rtol=0, atol=0)
    assert not torch.equal(new[-1], old[-1])
    # a model with more memory slots is still refused (not taken for missing markers)
    with pytest.raises(ValueError, match="mem_size"):
        load_checkpoint(make_icae(tiny_tok, train_decoder=True, mem_size=8), ckpt)
    assert trained_markers({"model_type": "icae", "stage": "finetune"}) == {"ae", "lm", "ft"}


def test_icae_loads_a_portable_folder_back(tiny_tok, tmp_path):
    a = _perturbed(make_icae(tiny_tok, train_decoder=True))
    save_checkpoint(a, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "trained.safetensors").unlink()  # peft folders + embeddings only
    b = make_icae(tiny_tok, train_decoder=True)
    load_checkpoint(b, tmp_path / "ckpt")
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_export_merged_plain_llm(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from icae.cli import main
    from icae.config import ModelConfig
    from icae.models import build_model
    from icae.testing import save_tiny_model_dir

    model_dir = save_tiny_model_dir(tmp_path / "model", hidden_size=32)
    cfg = ModelConfig(base_model=str(model_dir), model_dir=str(model_dir), model_type="llm",
                      lora_r=4, lora_alpha=8, lora_dropout=0.0)
    llm = _perturbed(build_model(cfg))
    save_checkpoint(llm, tmp_path / "ckpt")
    argv = ["export-merged", f"model.model_dir={model_dir}", f"model.base_model={model_dir}",
            "model.lora_r=4", "model.lora_alpha=8", "model.model_type=llm",
            "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "merged")]
    assert main(argv) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.tensor([llm.tokenizer("Alice was tired.")["input_ids"]])
    with torch.no_grad(), llm.adapter("llm"):
        ours = llm.peft(input_ids=ids).logits
    torch.testing.assert_close(merged(input_ids=ids).logits, ours, rtol=0, atol=1e-4)
    assert not any("lora" in k for k in merged.state_dict())
    # ICAE checkpoints cannot be merged: one clear line
    save_checkpoint(make_icae(llm.tokenizer), tmp_path / "icae")
    with pytest.raises(SystemExit):
        main(argv[:-4] + ["--checkpoint", str(tmp_path / "icae"), "--out",
                          str(tmp_path / "m2")])
    assert "plain-LLM" in capsys.readouterr().err


def test_fingerprint_probe_indices_stay_inside_large_tensors():
    # SmolLM2's embedding matrix has 49152 x 576 = 28,311,552 values: float32 linspace
    # rounded its last index past the end.
    from icae.models.checkpoint import probe_index

    for numel in (1, 5, 64, 65, 28_311_552, 151_936 * 4096):
        idx = probe_index(numel)
        assert int(idx.min()) == 0 and int(idx.max()) == numel - 1
        assert len(set(idx.tolist())) == len(idx) == min(64, numel)
