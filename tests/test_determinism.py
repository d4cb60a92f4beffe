"""Determinism settings per device: set by qgen.runtime.configure, recorded in provenance, read by audits."""

from __future__ import annotations

import copy

import torch

from qgen import provenance, runtime
from qgen.audit import bit_identity_expected, format_report


def test_configure_turns_tf32_off_unless_asked_and_determinism_reports_it() -> None:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        runtime.configure({"device": "cpu", "threads": 1})
        state = runtime.determinism()
        assert state["tf32_matmul"] is False and state["tf32_cudnn"] is False
        assert state["deterministic_algorithms"] is True and state["threads"] == 1
        assert state["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and state["cpu_capability"]
        runtime.configure({"device": "cpu", "threads": 1, "tf32": True})
        assert runtime.determinism()["tf32_matmul"] is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])
        runtime.configure({"device": "cpu", "threads": saved[2]})


def test_configure_sets_determinism_without_loading_inductor_unless_compiling() -> None:
    """The eager flag is set without importing Inductor, and no module a run uses imports Dynamo (1.5 and
    2.4 s of every worker start); a compiled run also sets Inductor's flag, as
    torch.use_deterministic_algorithms would."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from qgen import runtime; torch._C._set_deterministic_algorithms(False); "
        "import qgen.runner, qgen.train.loop, qgen.measures.run, qgen.quant, qgen.train.sam; "
        "runtime.configure({'device': 'cpu', 'threads': 1}); "
        "print(torch.are_deterministic_algorithms_enabled(), "
        "any(m in sys.modules for m in ('torch._inductor', 'torch._dynamo'))); "
        "runtime.configure({'device': 'cpu', 'threads': 1, 'compile': True}); "
        "import torch._inductor.config as c; print(c.deterministic)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "True"]


def test_every_result_records_its_determinism_settings() -> None:
    info = provenance.device_info(torch.device("cpu"))
    assert set(runtime.BIT_IDENTITY_KEYS) <= set(info["determinism"])
    assert info["determinism"]["threads"] == info["torch_threads"]


def _record(device: str = "cpu", **determinism) -> dict:
    base = {"deterministic_algorithms": True, "threads": 1, "cpu_capability": "AVX512"}
    return {
        "provenance": {
            "device": device,
            "libraries": {"torch": "2.14.1"},
            "determinism": {**base, **determinism},
        }
    }


def test_the_audit_says_whether_bit_identity_is_to_be_expected() -> None:
    assert bit_identity_expected(_record(), _record()) == {"expected": True, "differs": []}
    other = bit_identity_expected(_record(), _record(cpu_capability="AVX2", threads=2))
    assert other == {"expected": False, "differs": ["threads", "cpu_capability"]}
    assert bit_identity_expected(_record(), _record("cuda:0"))["differs"] == ["device: CUDA"]
    old = copy.deepcopy(_record())
    del old["provenance"]["determinism"]
    assert bit_identity_expected(old, _record())["differs"] == ["determinism settings not recorded"]
    report = {
        "run_id": "r",
        "recorded": "a",
        "rebuilt": None,
        "rebuild_seconds": 1.0,
        "provenance": {"recorded": {}, "rebuilt": {}},
        "tolerance": {"rtol": 0.0, "atol": 0.0, "basis": "both on CPU: identical"},
        "compared": 3,
        "differences": [],
        "bit_identity": other,
    }
    assert "bit identity: not guaranteed (threads, cpu_capability differ)" in format_report(report)
