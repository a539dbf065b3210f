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
    assert files == ["checkpoint.json", "config.yaml", "trained.safetensors"]
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
                       ("lora_alpha", 32), ("mem_size", 8)]:
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
    for key in ("base_fingerprint", "lora_alpha", "position_layout", "mean_compression_rate"):
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
