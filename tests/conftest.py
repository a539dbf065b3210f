from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is only on development machines and CI)")
    return path


@pytest.fixture(scope="session")
def tiny_tok():
    from icae.testing import tiny_tokenizer

    return tiny_tokenizer()


def make_icae(tok, arch="llama", layout="epl", mem_size=4, rate=2.0, seed=0, **model_kw):
    from icae.config import ModelConfig
    from icae.models import build_model
    from icae.testing import tiny_model

    import torch

    kw = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0)
    kw.update(model_kw)
    cfg = ModelConfig(mem_size=mem_size, mean_compression_rate=rate, position_layout=layout,
                      **kw)
    base = tiny_model(arch, vocab_size=len(tok), seed=seed)
    torch.manual_seed(seed + 1)
    return build_model(cfg, base, tok)
