"""Multi-GPU smoke test: a tiny random ICAE pre-trained with torchrun on N GPUs.

    python benchmarks/ddp_smoke.py /tmp/ddp          # writes a tiny model + prepared data
    torchrun --standalone --nproc_per_node 2 -m icae pretrain \
        model.model_dir=/tmp/ddp/model data.prepared_dir=/tmp/ddp/prepared ...

The printed overrides are the ones to pass.
"""

import sys
from pathlib import Path

from icae.data.prepared import split_path, write_records, write_token_documents
from icae.testing import save_tiny_model_dir, tiny_tokenizer

root = Path(sys.argv[1])
save_tiny_model_dir(root / "model", hidden_size=64)
tok = tiny_tokenizer()
text = ("The quick brown fox jumps over the lazy dog. A memory slot holds a summary of the "
        "context. Alice was beginning to get very tired of sitting by her sister. ") * 4
ids = tok(text, add_special_tokens=False)["input_ids"]
folder = root / "prepared" / "pretrain"
# train: documents that training draws fresh 48-token spans from; eval: span records
write_token_documents(split_path(folder, "train"), [ids[i % 40:i % 40 + 80] for i in range(32)],
                      len(tok))
write_records(split_path(folder, "eval"), [
    {"id": f"eval{i}", "task": "ae" if i % 2 == 0 else "lm", "source": "t",
     "context_ids": ids[i % 40:i % 40 + 48],
     "continuation_ids": [] if i % 2 == 0 else ids[i % 40 + 48:i % 40 + 64]}
    for i in range(32)])
print(f"model.model_dir={root}/model model.base_model={root}/model "
      f"data.prepared_dir={root}/prepared data.pretrain.min_len=48")
