"""Write a prepared-model folder with random weights of a real model's shape: its
config.json and tokenizer from SRC (a prepared model's folder without its weights, e.g.
.gpu/d/smollm2), weights drawn from the config's initialiser, in bf16. Training speed does
not depend on the weights' values, so the speed runs need neither the GGUF nor its
conversion (which cannot travel in one call).

    python benchmarks/gpu/random_model.py SRC DEST
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
config = AutoConfig.from_pretrained(src)
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(dest)
for f in src.iterdir():
    # (not icae_source.json: it describes a conversion these weights did not come from)
    if f.is_file() and f.name != "icae_source.json" and not (dest / f.name).exists():
        shutil.copy(f, dest / f.name)
print(f"random {config.model_type} weights ({sum(p.numel() for p in model.parameters()):,} "
      f"parameters) in {dest}")
