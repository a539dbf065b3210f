"""Progress of long steps that reads well both on a terminal and in a log file.

On a terminal: a tqdm bar. Anywhere else (Snakemake's ``> log 2>&1``, SLURM output
files): plain lines, never carriage returns, at most one every ``ICAE_PROGRESS_EVERY``
seconds (default 30) and one at the end::

    generate: 120/400 ex (30.0%), elapsed 1m02s, 1.94 ex/s, ETA 2m24s

:func:`quiet_third_party_bars` turns the Hugging Face libraries' own bars (loading
weights, writing shards, downloads) off when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("icae.progress")


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def fmt_count(n: float, scale: bool) -> str:
    if not scale:
        return f"{n:g}" if isinstance(n, float) else str(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def progress_line(desc: str, done: float, total: float | None, elapsed: float, unit: str,
                  scale: bool = False) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{desc}: {fmt_count(done, scale)}"]
    if total:
        parts[0] += f"/{fmt_count(total, scale)} {unit} ({100.0 * done / total:.1f}%)"
    else:
        parts[0] += f" {unit}"
    parts.append(f"elapsed {fmt_duration(elapsed)}")
    parts.append(f"{fmt_count(rate, scale) if scale else f'{rate:.3g}'} {unit}/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {fmt_duration((total - done) / rate)}")
    return ", ".join(parts)


class LineProgress:
    """The tqdm subset the package uses (context manager, ``update``), as log lines."""

    def __init__(self, total: float | None, desc: str, unit: str = "it",
                 every_s: float | None = None, unit_scale: bool = False, stream=None,
                 clock=time.monotonic):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.scale = unit_scale
        self.every_s = every_s if every_s is not None else float(
            os.environ.get("ICAE_PROGRESS_EVERY", "30"))
        self.stream = stream
        self.clock = clock
        self.n = 0
        self.start = clock()
        self.last = self.start
        self.closed = False

    def _emit(self) -> None:
        line = progress_line(self.desc, self.n, self.total, self.clock() - self.start,
                             self.unit, self.scale)
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepClock:
    """Elapsed time, throughput and ETA of a training run, counted from the step it
    started (or resumed) at, for the one-line training logs."""

    def __init__(self, start_step: int, max_steps: int, clock=time.monotonic):
        self.start_step = start_step
        self.max_steps = max_steps
        self.clock = clock
        self.t0 = clock()
        self.tokens = 0

    def line(self, step: int, logs: dict | None = None) -> str:
        if logs and "trained_tokens" in logs:  # tokens since the previous training log
            self.tokens += int(logs["trained_tokens"])
        elapsed = self.clock() - self.t0
        done = step - self.start_step
        parts = [f"elapsed {fmt_duration(elapsed)}"]
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} steps/s")
            if self.tokens:
                parts.append(f"{fmt_count(self.tokens / elapsed, True)} tok/s")
            if self.max_steps and self.max_steps > step:
                parts.append(f"ETA {fmt_duration((self.max_steps - step) / rate)}")
        return ", ".join(parts)


class _Null:
    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: float | None, desc: str, enabled: bool = True, unit: str = "it",
             unit_scale: bool = False):
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere, nothing when disabled."""
    if not enabled:
        return _Null()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                    dynamic_ncols=True, leave=False)
    return LineProgress(total, desc, unit=unit, unit_scale=unit_scale)


def quiet_third_party_bars(stream=None) -> None:
    """Hugging Face hub / transformers / datasets bars off unless ``stream`` (stderr) is a
    terminal: in a log file each redraw is a carriage-return line."""
    stream = stream or sys.stderr
    if stream.isatty():
        return
    # Read when those libraries are imported (transformers' bars follow the hub's flag).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
