"""The ``"nkipy"`` device backed by NeuronCore memory, on the fake libnrt.

Which driver backs the device is chosen once, when ``spiky.torch`` is imported
(:func:`spiky.torch.device.choose_driver`), so each case runs in a fresh process whose environment
points ``SPIKY_LIBNRT`` at the fake libnrt. The device tests (test_device.py,
test_device_compile.py), the device cases of the pipeline, bf16, training and resident-weights
tests and nrt_device_checks.py run again there: every test that does not choose its target runs
inside ``fake_neuron`` (conftest.py, ``SPIKY_TEST_ON_FAKE_NEURON``), the others on the target they
choose, host included (graphs on the host, tensors on the NeuronCore).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spiky.testing import fake_libnrt

HERE = Path(__file__).resolve().parent

AGAIN = [
    "test_device.py", "test_device_compile.py", "nrt_device_checks.py", "test_resident_weights.py",
    "test_pipeline.py::test_device_tensors_in_and_out",
    "test_pipeline.py::test_keep_outputs_on_device_in_training_keeps_cpu_outputs",
    "test_pipeline.py::test_keep_outputs_on_device_with_cpu_inputs_returns_nkipy_tensors",
    "test_pipeline.py::test_readme_per_function_options_example",
    "test_bf16.py::test_nkipy_device_tensors_in_and_out",
    "test_bf16.py::test_neuron_target_nkipy_tensors_in_bfloat16",
    "test_bf16.py::test_dynamic_graph_is_padded_and_matches_eager",
    "test_training.py::test_gradients_w_r_t_device_inputs",
]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SPIKY_NKIPY_DEVICE_DRIVER")
           and not k.startswith("NEURON_RT_")}
    env.update(SPIKY_LIBNRT=str(fake_libnrt()), SPIKY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_device_tests_pass_with_the_device_on_a_neuron_core(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"),
           *[str(HERE / item) for item in AGAIN]]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path, SPIKY_TEST_ON_FAKE_NEURON="1"),
                         timeout=1200, check=False, cwd=HERE)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = re.search(r"(\d+) passed", run.stdout)
    assert summary is not None and int(summary.group(1)) >= 90, tail
    assert not re.search(r"\d+ (failed|error|skipped)", run.stdout), tail


@pytest.mark.parametrize(("driver", "expected"), [("auto", "nrt"), ("nrt", "nrt"), ("host", "host"), ("", "nrt")])
def test_the_driver_is_chosen_at_import(tmp_path: Path, driver: str, expected: str) -> None:
    code = ("import os, spiky.torch, torch\n"
            "from spiky.torch import device\n"
            "print(device.DRIVER, torch.nkipy.device_count(), os.environ.get('NEURON_RT_VISIBLE_CORES'))\n")
    run = _python(code, _env(tmp_path, SPIKY_NKIPY_DEVICE_DRIVER=driver, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2"))
    assert run.returncode == 0, run.stderr[-2000:]
    # nrt: the runtime started on LOCAL_RANK's core, as init_nkipy_backend would have set it
    assert run.stdout.split() == [expected, "1", "1" if expected == "nrt" else "None"]


def test_an_unknown_driver_is_refused_by_name(tmp_path: Path) -> None:
    run = _python("import spiky.torch", _env(tmp_path, SPIKY_NKIPY_DEVICE_DRIVER="cuda"))
    assert run.returncode != 0
    assert "SPIKY_NKIPY_DEVICE_DRIVER='cuda' is not a driver; valid: auto, host, nrt" in run.stderr


def test_nrt_without_a_neuron_runtime_says_what_is_missing(tmp_path: Path) -> None:
    env = _env(tmp_path, SPIKY_NKIPY_DEVICE_DRIVER="nrt", SPIKY_LIBNRT="/nonexistent/libnrt.so.1")
    run = _python("import spiky.torch", env)
    assert run.returncode != 0
    assert "SPIKY_NKIPY_DEVICE_DRIVER=nrt, but the nrt driver cannot run here: no libnrt.so.1 found" in run.stderr
    env["SPIKY_NKIPY_DEVICE_DRIVER"] = "auto"  # auto falls back to host memory
    run = _python("import spiky.torch\nfrom spiky.torch import device\nprint(device.DRIVER)", env)
    assert run.returncode == 0 and run.stdout.split() == ["host"], run.stderr[-2000:]


def test_a_core_offset_the_started_runtime_cannot_honour_is_refused(tmp_path: Path) -> None:
    code = ("import spiky.torch\n"
            "from spiky.errors import SpikyConfigError\n"
            "try:\n"
            "    spiky.torch.init_nkipy_backend(core_offset=1)\n"
            "except SpikyConfigError as exc:\n"
            "    print('refused:', exc)\n"
            "spiky.torch.init_nkipy_backend(core_offset=0)\n"
            "print('target', spiky.torch.current_config().target)\n")
    run = _python(code, _env(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: core_offset=1: the Neuron runtime already started on NeuronCore 0" in run.stdout
    assert "set NEURON_RT_VISIBLE_CORES before importing spiky.torch" in run.stdout
    assert run.stdout.splitlines()[-1] == "target neuron"
