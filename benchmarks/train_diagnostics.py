"""Where a real training run waits: host-device synchronisations and GPU idle time of the
training loop itself (the Trainer, its data loader, our model), not of a bare step.

Runs `python -m icae <stage> ...` in this process with a Trainer callback that
- during optimizer steps ``--sync-steps A:B`` (CUDA only) turns on torch's
  synchronisation debug mode and counts every synchronising operation by the code that
  called it (``syncs.txt``: count per call site, innermost frames first);
- during steps ``--profile-steps C:D`` runs torch.profiler and writes the operator tables
  by device and by host time, headed by the wall clock and the share of it in which at
  least one kernel ran (``profile.txt``; the union of kernel intervals, so overlapping
  kernels count once);
and writes both summaries to ``diagnostics.json``. Steps count from the run's first;
leave the first ones (compilation, warm-up) out of both windows.

    python benchmarks/train_diagnostics.py --out DIR --sync-steps 12:14 \
        --profile-steps 14:18 -- pretrain --config configs/smollm2-icae.yaml key=value ...
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's icae

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

SYNC_MESSAGE = "called a synchronizing CUDA operation"
# Frames worth naming in a call site: ours and the libraries around the training loop.
KEEP = ("/icae/", "/transformers/", "/accelerate/", "/peft/", "/torch/nn/", "/torch/utils/",
        "/torch/optim/", "/benchmarks/")


def _window(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a step window FIRST:END (e.g. 8:10)") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"step window {text!r} is empty or negative")
    return a, b


def _site(stack: list[traceback.FrameSummary], depth: int = 4) -> str:
    frames = [f for f in stack if any(k in f.filename for k in KEEP)][-depth:]
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))


def _short(path: str) -> str:
    for marker in ("site-packages/", "/icae/", "/benchmarks/"):
        if marker in path:
            cut = path.index(marker) + (len(marker) if marker == "site-packages/" else 1)
            return path[cut:]
    return path


def busy_seconds(events) -> float:
    """Seconds in which at least one kernel ran: the union of the kernels' intervals."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                   and e.time_range.end > e.time_range.start)
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total / 1e6


class Diagnostics(TrainerCallback):
    def __init__(self, out: Path, sync_steps, profile_steps):
        self.out = out
        self.sync_steps = sync_steps
        self.profile_steps = profile_steps
        self.syncs: collections.Counter = collections.Counter()
        self.summary: dict = {}
        self._showwarning = None
        self._prof = None
        self._t0 = 0.0

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE in str(message):
            self.syncs[_site(traceback.extract_stack()[:-1])] += 1
        else:
            self._showwarning(message, category, filename, lineno, file, line)

    def on_step_begin(self, args, state, control, **kwargs):
        step = state.global_step
        cuda = torch.cuda.is_available()
        if cuda and self.sync_steps and step == self.sync_steps[0]:
            warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}.*")
            self._showwarning, warnings.showwarning = warnings.showwarning, self._record
            torch.cuda.set_sync_debug_mode("warn")
        if self.profile_steps and step == self.profile_steps[0]:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            if cuda:
                torch.cuda.synchronize()
            self._prof = profile(activities=acts)
            self._prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step  # steps done, this one included
        if self._showwarning is not None and step == self.sync_steps[1]:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning, self._showwarning = self._showwarning, None
            n = self.sync_steps[1] - self.sync_steps[0]
            self.summary["sync_steps"] = list(self.sync_steps)
            self.summary["syncs_per_step"] = sum(self.syncs.values()) / n
            self.summary["sync_sites"] = {k: v / n for k, v in self.syncs.most_common()}
            lines = [f"synchronising operations per optimizer step, steps {list(self.sync_steps)}: "
                     f"{self.summary['syncs_per_step']:g}"]
            lines += [f"{v / n:8g}  {k}" for k, v in self.syncs.most_common()]
            (self.out / "syncs.txt").write_text("\n".join(lines) + "\n")
            self._write()
        if self._prof is not None and step == self.profile_steps[1]:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self._t0
            self._prof.__exit__(None, None, None)
            prof, self._prof = self._prof, None
            busy = busy_seconds(prof.events()) if torch.cuda.is_available() else None
            n = self.profile_steps[1] - self.profile_steps[0]
            self.summary.update({
                "profile_steps": list(self.profile_steps), "profile_wall_s": wall,
                "profile_wall_s_per_step": wall / n, "gpu_busy_s": busy,
                "gpu_busy_share": busy / wall if busy is not None else None})
            from icae.training.benchmark import _profile_table

            head = (f"steps {list(self.profile_steps)}: wall {wall:.3f} s"
                    + (f", a kernel running {busy:.3f} s ({busy / wall:.1%})\n" if busy else "\n"))
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            (self.out / "profile.txt").write_text(head + _profile_table(prof, wall, device))
            self._write()

    def _write(self):
        (self.out / "diagnostics.json").write_text(json.dumps(self.summary, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sync-steps", type=_window, default=None, metavar="A:B")
    ap.add_argument("--profile-steps", type=_window, default=None, metavar="C:D")
    ap.add_argument("icae_args", nargs=argparse.REMAINDER,
                    help="-- then the icae command line (stage, --config, overrides)")
    args = ap.parse_args()
    icae_args = args.icae_args[1:] if args.icae_args[:1] == ["--"] else args.icae_args
    args.out.mkdir(parents=True, exist_ok=True)
    diag = Diagnostics(args.out, args.sync_steps, args.profile_steps)

    import icae.training.run as run
    from icae.cli import main as icae_main

    real_train = run.train

    def train_with_diagnostics(*a, callbacks=None, **k):
        return real_train(*a, callbacks=list(callbacks or []) + [diag], **k)

    run.train = train_with_diagnostics
    rc = icae_main(icae_args)
    print(json.dumps(diag.summary, indent=1)[:4000])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
