"""GPU placement by lock files (icae.placement)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from icae.placement import claim, device_pool, lock_dir


def test_pool_from_visible_devices():
    assert device_pool({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert device_pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert device_pool({"CUDA_VISIBLE_DEVICES": "GPU-ab12,GPU-cd34"}) == ["GPU-ab12",
                                                                         "GPU-cd34"]


def test_lock_dir_is_per_slurm_job(tmp_path):
    assert lock_dir({"ICAE_GPU_LOCK_DIR": str(tmp_path)}) == tmp_path
    a, b = lock_dir({"SLURM_JOB_ID": "11"}), lock_dir({"SLURM_JOB_ID": "12"})
    assert a != b and a.name.endswith("-11")


def test_claims_do_not_share_devices_and_locks_are_released(tmp_path):
    first, fds1 = claim(1, ["0", "1"], tmp_path)
    second, fds2 = claim(1, ["0", "1"], tmp_path)
    assert first != second and sorted(first + second) == ["0", "1"]
    with pytest.raises(SystemExit, match="no 1 free GPU"):
        claim(1, ["0", "1"], tmp_path, poll_s=0.05, timeout_s=0.2)
    for fd in fds1:
        os.close(fd)
    assert claim(1, ["0", "1"], tmp_path)[0] == first
    with pytest.raises(SystemExit, match="only 2 visible"):
        claim(3, ["0", "1"], tmp_path)


def test_wrapper_sets_devices_and_holds_them_while_the_command_runs(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "4,5", "ICAE_GPU_LOCK_DIR": str(tmp_path)}
    script = ("import os, sys\n"
              "from icae.placement import claim\n"
              "mine = os.environ['CUDA_VISIBLE_DEVICES']\n"
              "other, _ = claim(1, ['4', '5'], __import__('pathlib').Path(sys.argv[1]))\n"
              "print(mine, other[0])\n")
    proc = subprocess.run([sys.executable, "-m", "icae.placement", "--gpus", "1", "--",
                           sys.executable, "-c", script, str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    mine, other = proc.stdout.split()
    assert mine == "4" and other == "5"  # the exec'd command still holds device 4
    # Without GPUs the command runs unchanged.
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-m", "icae.placement", "--gpus", "1", "--",
                           sys.executable, "-c", "import os; print(repr(os.environ["
                           "'CUDA_VISIBLE_DEVICES']))"], capture_output=True, text=True,
                          env=env)
    assert proc.stdout.strip() == "''", proc.stderr
