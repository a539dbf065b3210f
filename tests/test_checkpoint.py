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
