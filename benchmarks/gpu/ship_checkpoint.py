"""Turn a packed GPU checkpoint (benchmarks/gpu/pack_checkpoint.py: bf16 trained.safetensors
+ checkpoint.json + config.yaml) into the folder shipped in checkpoints/: the portable
layout only (peft adapter folders, embeddings.safetensors, tokenizer), in bfloat16, which
``load_checkpoint`` and plain peft both read. Loading it here also checks that it fits the
locally prepared base model (same GGUF -> same fingerprint).

    python benchmarks/gpu/ship_checkpoint.py PACKED_DIR checkpoints/NAME [model_dir]
"""
import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from icae.config import ModelConfig
from icae.models import build_model
from icae.models.checkpoint import META, describe
from icae.models.portable import write_portable

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
model_dir = sys.argv[3] if len(sys.argv) > 3 else "models/base"
meta = json.loads((src / META).read_text())
run_model = meta["run_config"]["model"]
names = {f.name for f in fields(ModelConfig)}
cfg = ModelConfig(**{k: v for k, v in run_model.items() if k in names})
cfg.model_dir, cfg.dtype = model_dir, "bfloat16"
model = build_model(cfg, checkpoint=str(src))
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
tmp.mkdir(parents=True)
write_portable(model, tmp)
# LoRA weights stay float32 in the model (peft keeps adapters in full precision); on disk
# bfloat16 halves the folder, and loading casts back.
import torch
from safetensors.torch import load_file, save_file

from safetensors import safe_open

for path in tmp.rglob("*.safetensors"):
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(path),
              metadata=metadata)
# The tokenizer is the base model's own (the fingerprint in checkpoint.json pins the base).
shutil.rmtree(tmp / "tokenizer", ignore_errors=True)
# The run's config with this project's paths instead of the GPU machine's (commands that
# read a checkpoint's config.yaml, e.g. `icae try`, then find the prepared base model).
import yaml

run_cfg = yaml.safe_load((src / "config.yaml").read_text())
run_cfg["model"]["model_dir"] = model_dir
run_cfg["data"]["prepared_dir"] = "data/prepared/smollm2"
for section in ("pretrain", "finetune"):
    run_cfg[section]["output_dir"] = run_cfg[section]["resume_dir"] = None
(tmp / "config.yaml").write_text(yaml.safe_dump(run_cfg, sort_keys=False))
mine = describe(model)
meta["tensors"] = mine["tensors"]
meta["dtype_on_disk"] = "bfloat16"
(tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
print(f"shipped {dst}: {size / 2**20:.1f} MiB")
