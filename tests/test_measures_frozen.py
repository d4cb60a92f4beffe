"""The measures of small deterministic runs, frozen: every value of measures.json (less its provenance:
the timings and cost record) equals, bit for bit, what the code computed before the measures were made
cheaper (issue 16, item 5: same draws, same order of floating-point operations). Values were recorded
from that code into ``tests/frozen_measures.json``; they depend on the CPU kernels, so they are compared
on the torch version and CPU instruction set they were recorded with (elsewhere the test is skipped,
saying why).

The runs are built without training, so that the values pin the measures, not the training loop: on the
embedded digits data, a network at its seeded initialization (quantizers calibrated on 256 examples,
BatchNorm statistics randomized), then given a least-squares read-out on its last layer's inputs (so that
it classifies, and the searches have accuracy to lose), quantizers calibrated again. Three families of the
default config, each at the settings of one measuring path: the MLP with LSQ W4A4 and 8-bit first and last
layers (one batch per subset, as the reference settings are read: the Hessian keeps its graph), the
BinaryConnect MLP with BatchNorm (folded; mini-batches of 64, the PAC-Bayes draws under vmap), the maxout
network in dynamic fixed point (one batch), and the LSQ MLP again in the latent view, perturbing the
weights only (mini-batches of 100).

    QGEN_FREEZE_MEASURES=1 pytest tests/test_measures_frozen.py   # record the values anew (on purpose only)
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from qgen import runtime
from qgen.config import measures_schema, run_spec_schema, validate
from qgen.experiments import normalize_spec
from qgen.measures.folding import weighted_layers
from qgen.measures.run import measure_run
from qgen.models import build_model
from qgen.quant import init_quantizers

FROZEN = Path(__file__).with_name("frozen_measures.json")
DIGITS = {"name": "digits", "test_fraction": 0.25, "split_seed": 0}
LSQ = {"method": "lsq", "weight_bits": 4, "act_bits": 4, "per_channel": False, "first_layer": "8bit",
       "last_layer": "8bit"}  # fmt: skip
SGD = {"name": "sgd", "lr": 0.05, "batch_size": 64}
#: (model, quant) of each family, as config/default.yaml's experiments (smaller widths)
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lsq_mlp": ({"name": "mlp", "depth": 2, "width": 32}, LSQ),
    "bc_mlp_bn": (
        {
            "name": "mlp",
            "depth": 2,
            "width": 48,
            "batch_norm": True,
            "output_batch_norm": True,
            "bn_momentum": 0.15,
            "bn_eps": 0.0001,
            "init": "glorot",
        },
        {"method": "binary", "stochastic": False},
    ),
    "maxout_dfxp": (
        {"name": "maxout", "depth": 2, "width": 24, "pieces": 5, "dropout": 0.5, "input_dropout": 0.2},
        {
            "method": "dynamic_fixed",
            "prop_bits": 10,
            "update_bits": 12,
            "initial_range": 5,
            "max_overflow": 0.0001,
            "range_update_every": 7,
            "range_init_epochs": 3,
        },
    ),
}
SMALL = {
    "examples": 300,
    "noise": {"examples": 200},
    "pacbayes": {"draws": 4, "depth": 8},
    "worst_case": {"examples": 150, "steps": 4, "depth": 8},
    "hessian": {"examples": 128, "max_probes": 8, "min_probes": 3, "power_iters": 12},
    "noise_model": {"draws": 3},
}
#: case -> (family, measure settings beyond SMALL)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lsq_mlp": ("lsq_mlp", {}),
    "bc_mlp_bn": ("bc_mlp_bn", {"batch_size": 64, "pacbayes": {**SMALL["pacbayes"], "batched": True}}),
    "maxout_dfxp": ("maxout_dfxp", {}),
    "lsq_mlp_latent_weights": ("lsq_mlp", {"perturb": "latent", "parameters": "weights", "batch_size": 100}),
}


def _spec(family: str) -> dict[str, Any]:
    model, quant = FAMILIES[family]
    spec = {"data": DIGITS, "model": model, "quant": quant, "optim": SGD,
            "train": {"max_epochs": 1, "target_ce": None}, "seed": 0}  # fmt: skip
    return normalize_spec(validate(copy.deepcopy(spec), run_spec_schema(), where=family))


@torch.no_grad()
def untrained_payload(family: str, data: Any) -> dict[str, Any]:
    """A model.pt payload built without training (see the module docstring)."""
    spec = _spec(family)
    torch.manual_seed(0)
    model = build_model(spec, data.input_shape, data.num_classes)
    x, _ = next(iter(data.train.batches(256)))
    init_quantizers(model, x)
    gen = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    init_state = copy.deepcopy(model.state_dict())
    model.eval()
    _, last = list(weighted_layers(model))[-1]
    features: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _m, args: features.append(args[0]))
    xs, ys = next(iter(data.train.batches(1024)))
    model(xs)
    handle.remove()
    f = torch.cat([features[0].double(), torch.ones(len(ys), 1, dtype=torch.float64)], dim=1)
    target = nn.functional.one_hot(ys, data.num_classes).double() * 2 - 1
    ridge = f.T @ f + 1e-2 * torch.eye(f.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(ridge, f.T @ target).T.float()
    last.weight.copy_(solution[:, :-1])
    if last.bias is not None:
        last.bias.copy_(solution[:, -1])
    init_quantizers(model, x)
    return {
        "run_id": f"frozen-{family}",
        "spec": spec,
        "state_dict": model.state_dict(),
        "init_state": init_state,
    }


def _settings(extra: dict[str, Any]) -> dict[str, Any]:
    return validate(copy.deepcopy({**SMALL, **extra}), measures_schema(), where="frozen measures")


def _body(case: str, data: Any) -> dict[str, Any]:
    family, extra = CASES[case]
    body = measure_run(untrained_payload(family, data), data, _settings(extra), torch.device("cpu"))
    for how_it_ran in ("timings", "cost"):  # measures.json's provenance, not what was measured
        body.pop(how_it_ran)
    return json.loads(json.dumps(body))  # as measures.json holds it (tuples as lists, keys as strings)


def _environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Paths where ``got`` and ``want`` differ (floats bit for bit, NaN equal to NaN)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(got) | set(want))
        return [
            d
            for k in keys
            for d in _differences(got.get(k, "<missing>"), want.get(k, "<missing>"), f"{path}.{k}")
        ]
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [
            d
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for d in _differences(g, w, f"{path}[{i}]")
        ]
    both_nan = isinstance(got, float) and isinstance(want, float) and math.isnan(got) and math.isnan(want)
    if both_nan or (type(got) is type(want) and got == want):
        return []
    return [f"{path}: {got!r} != {want!r}"]


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    if os.environ.get("QGEN_FREEZE_MEASURES"):
        return {}
    if not FROZEN.exists():
        pytest.fail(
            f"{FROZEN} is missing: record it with QGEN_FREEZE_MEASURES=1 (from code known to be right)"
        )
    record = json.loads(FROZEN.read_text())
    if record["environment"] != _environment():
        pytest.skip(f"measures frozen on {record['environment']}, this is {_environment()}: bits may differ")
    return record["cases"]


@pytest.fixture(scope="module")
def cpu_runtime():
    return runtime.configure({"device": "cpu", "threads": 1})


@pytest.mark.parametrize("case", list(CASES))
def test_measures_equal_the_frozen_values_bit_for_bit(case, frozen, cpu_runtime, digits_run) -> None:
    body = _body(case, digits_run)
    if os.environ.get("QGEN_FREEZE_MEASURES"):
        record = json.loads(FROZEN.read_text()) if FROZEN.exists() else {"cases": {}}
        record["environment"] = _environment()
        record["cases"][case] = body
        FROZEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {case} into {FROZEN.name}")
    differences = _differences(body, frozen[case])
    assert not differences, f"{len(differences)} values changed, e.g.\n" + "\n".join(differences[:20])


def test_the_frozen_runs_are_measured_in_earnest(frozen, cpu_runtime, digits_run) -> None:
    """The frozen runs classify (the read-out), their searches move (not stuck at an end of the
    interval) and the BatchNorms fold."""
    if not frozen:
        pytest.skip("recording")
    for case, body in frozen.items():
        m = body["measures"]
        assert m["noise_model.train_error"] < (0.8 if case == "bc_mlp_bn" else 0.2), case  # chance: 0.9
        assert 0 < m["pacbayes.sigma"] < 2 and 1e-5 < m["sharpness.alpha"] < 1, case
    assert frozen["bc_mlp_bn"]["measures"]["bn.folded"] == 3.0
