"""Lightning's NVML-based CUDA check is dropped only where NVML cannot be loaded (no NVIDIA driver)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from dlpipe.training import cuda_check


def nvml_loads() -> bool:
    try:
        ctypes.CDLL(cuda_check.NVML_LIBRARY)
    except OSError:
        return False
    return True


def test_a_process_that_trains_checks_cuda_through_nvml_only_where_nvml_exists():
    code = (
        "import os, lightning, dlpipe.training.trainer, torch; "
        f"print(os.environ.get({cuda_check.NVML_ENV!r}), torch.cuda.is_available())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == (["1", out[1]] if nvml_loads() else ["None", "False"])


@pytest.mark.skipif(sys.platform != "linux", reason="stands in Linux's libc.so.6 for NVML")
def test_the_check_is_kept_when_the_library_loads_and_left_alone_when_unset(monkeypatch):
    monkeypatch.setenv(cuda_check.NVML_ENV, "1")
    monkeypatch.setattr(cuda_check, "NVML_LIBRARY", "libc.so.6")  # a library that loads: as if NVML were there
    assert cuda_check.drop_nvml_check_without_driver() is False
    assert cuda_check.NVML_ENV in os.environ
    monkeypatch.setattr(cuda_check, "NVML_LIBRARY", "libdlpipe-missing.so")
    assert cuda_check.drop_nvml_check_without_driver() is True
    assert cuda_check.NVML_ENV not in os.environ
    assert cuda_check.drop_nvml_check_without_driver() is False  # unset: nothing to do
