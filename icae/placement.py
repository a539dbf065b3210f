"""Give each GPU job its own devices: ``python -m icae.placement --gpus N -- CMD ...``.

Snakemake's ``--resources gpu=N`` caps how many GPU jobs run at once but does not say
*which* device a job gets, so without help every job lands on ``cuda:0``. This wrapper
claims ``N`` free devices through lock files, sets ``CUDA_VISIBLE_DEVICES`` to them and
replaces itself with ``CMD`` (``exec``): the locks stay held by the command (and by
``torchrun``'s workers through it) until it exits, however it exits, because they are
``flock`` locks on file descriptors that ``CMD`` inherits.

* The pool is ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs, as given), else
  the devices ``nvidia-smi -L`` lists; with no GPUs at all the command runs unchanged
  (CPU-only machines, the test suite).
* Lock files live in ``$ICAE_GPU_LOCK_DIR`` (default ``<tmp>/icae-gpu-locks-<uid>``,
  with ``-<SLURM_JOB_ID>`` inside a SLURM allocation: SLURM numbers each job's devices
  from 0, so two jobs on one node must not share lock names).
* When every device is taken (another workflow on the same machine), it waits, saying so
  once.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV_LOCK_DIR = "ICAE_GPU_LOCK_DIR"


def device_pool(environ: dict | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines()
                                            if l.startswith("GPU "))]


def lock_dir(environ: dict | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV_LOCK_DIR):
        return Path(env[ENV_LOCK_DIR])
    name = f"icae-gpu-locks-{os.getuid()}"
    if env.get("SLURM_JOB_ID"):
        name += f"-{env['SLURM_JOB_ID']}"
    return Path(tempfile.gettempdir()) / name


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def claim(n: int, pool: list[str], folder: Path, poll_s: float = 2.0,
          timeout_s: float | None = None) -> tuple[list[str], list[int]]:
    """Lock ``n`` devices of ``pool``; returns them and the open lock descriptors."""
    if n > len(pool):
        raise SystemExit(f"icae.placement: {n} GPU(s) asked for, but only {len(pool)} "
                         f"visible ({','.join(pool) or 'none'}); lower workflow.gpu.<rule>")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    said = False
    while True:
        got: list[tuple[str, int]] = []
        for device in pool:
            fd = os.open(folder / _lock_name(device), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append((device, fd))
            if len(got) == n:
                return [d for d, _ in got], [f for _, f in got]
        for _, fd in got:  # not enough free: give back what we took and wait
            os.close(fd)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise SystemExit(f"icae.placement: no {n} free GPU(s) of {pool} after "
                             f"{timeout_s:.0f} s (locks in {folder})")
        if not said:
            print(f"icae.placement: waiting for {n} free GPU(s) of {','.join(pool)} "
                  f"(locks in {folder})", file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m icae.placement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, required=True, help="devices for the command")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- followed by the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    pool = device_pool() if args.gpus > 0 else []
    if pool:
        devices, fds = claim(args.gpus, pool, lock_dir())
        for fd in fds:
            os.set_inheritable(fd, True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        print(f"icae.placement: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}",
              file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise SystemExit(f"icae.placement: cannot run {command[0]!r}: {exc}") from None


if __name__ == "__main__":
    main()
