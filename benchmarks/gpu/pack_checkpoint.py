"""The shippable part of a checkpoint: trained parameters in bfloat16 plus its
``checkpoint.json`` and ``config.yaml``. The portable peft folders are left out (they
would double what crosses the GPU machine's 16 MiB-per-file limit); back here
``benchmarks/gpu/ship_checkpoint.py`` rebuilds them from this.

    python benchmarks/gpu/pack_checkpoint.py results/RUN/pretrain OUT_DIR
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
state = load_file(str(src / "trained.safetensors"))
save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()},
          str(dst / "trained.safetensors"))
for name in ("checkpoint.json", "config.yaml"):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
meta = json.loads((dst / "checkpoint.json").read_text())
print(f"packed {src} -> {dst}: {sum(v.numel() for v in state.values()):,} parameters, "
      f"{(dst / 'trained.safetensors').stat().st_size / 2**20:.1f} MiB, "
      f"examples_seen {meta.get('examples_seen')}")
