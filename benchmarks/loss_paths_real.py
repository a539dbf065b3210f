"""Real weights, two loss paths: ``icae pretrain`` for a few steps with the fused LM-head
loss (icae.models.linear_ce, the default for a frozen plain head) and twice with the plain
path (logits -> fp32 cross-entropy, each chunk recomputed in the backward pass), same seed,
same data; prints the logged losses and the largest differences, fused vs plain against
plain vs plain. A CPU check that the fused path trains a real model as the plain one did.

Usage: python benchmarks/loss_paths_real.py --config configs/smollm2-icae.yaml \
           [key=value ...]   (e.g. model.model_dir=... data.prepared_dir=... pretrain.max_steps=8)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's icae


def run(config: str, overrides: list[str], out: Path, fused: bool) -> list[dict]:
    from icae.config import load_config
    from icae.models.base import LoRAWrappedModel
    from icae.training.run import pretrain

    original = LoRAWrappedModel._fused_loss_applies
    if not fused:
        LoRAWrappedModel._fused_loss_applies = lambda self: False
    try:
        cfg = load_config(config, overrides + [
            f"pretrain.output_dir={out}/ckpt", f"pretrain.resume_dir={out}/resume",
            "pretrain.logging_steps=1", "pretrain.eval_steps=null",
            "pretrain.compile_layers=false", "pretrain.dataloader_num_workers=0"])
        pretrain(cfg)
    finally:
        LoRAWrappedModel._fused_loss_applies = original
    return [r for r in csv.DictReader(open(out / "resume" / "log.csv")) if r.get("loss")]


def _diffs(a_rows, b_rows, keys):
    worst = {}
    for a, b in zip(a_rows, b_rows):
        for k in keys:
            if a.get(k) and b.get(k):
                worst[k] = max(worst.get(k, 0.0), abs(float(a[k]) - float(b[k])))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The plain path twice: how far two runs of the same code drift apart (threaded
        # CPU reductions) is the floor the fused-vs-plain difference is read against.
        for name, fused in (("fused", True), ("plain", False), ("plain-again", False)):
            rows[name] = run(args.config, args.overrides, Path(tmp) / name, fused)
    keys = [k for k in ("loss", "ae_loss", "lm_loss", "grad_norm") if k in rows["fused"][0]]
    for a, b in zip(rows["fused"], rows["plain"]):
        print(f"step {a['step']}: " + "  ".join(
            f"{k} {float(a[k]):.5f} / {float(b[k]):.5f}" for k in keys if a.get(k) and b.get(k)))
    print(json.dumps({"steps": len(rows["fused"]),
                      "max_abs_diff fused vs plain": _diffs(rows["fused"], rows["plain"], keys),
                      "max_abs_diff plain vs plain": _diffs(rows["plain"], rows["plain-again"],
                                                            keys)}))


if __name__ == "__main__":
    main()
