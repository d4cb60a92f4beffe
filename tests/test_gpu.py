"""Training and evaluation on CUDA agree with the CPU (skipped without a CUDA device).

Tolerances: evaluating one model gives the same metrics on both devices to 1e-5 (float32 kernels sum in
different orders); training for a few epochs drifts further (every step's rounding differs, and a
quantizer may round a weight to a neighbouring level), so trained runs are compared by their outcome:
training CE within 0.05 and test accuracy within 0.03 of the CPU run's. The measures' CUDA tests are in
tests/test_measure_values.py (marker ``gpu`` too); ``scripts/gpu_check.sh`` runs them all on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from qgen import runtime
from qgen.data.batches import Standardize, TensorSplit
from qgen.data.run_data import RunData, open_run_data
from qgen.measures.gap import generalization_metrics
from qgen.models import build_model
from qgen.train import train_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

QUANTS = {
    "lsq4": {"method": "lsq", "weight_bits": 4, "act_bits": 4},
    "float": {"method": "float"},
    "bc_stoch": {"method": "binary", "stochastic": True},
}


def _train(spec, data: RunData, out_dir, device: str):
    cfg = {"device": device, "threads": 1, "compile": False, "checkpoint_every": 100}
    return train_run(spec, data, out_dir, cfg, runtime.configure(cfg), progress=False)


@pytest.mark.parametrize("quant", list(QUANTS))
def test_training_on_cuda_matches_cpu_within_tolerance(
    tmp_path, digits_prepared, spec_factory, quant
) -> None:
    spec = spec_factory(quant=QUANTS[quant], train={"max_epochs": 4}, data={"val_size": 200})
    results = {}
    for device in ("cpu", "cuda"):
        data = open_run_data(digits_prepared, spec["data"], device)
        model, _, result = _train(spec, data, tmp_path / device, device)
        assert next(model.parameters()).device.type == device
        results[device] = (result, generalization_metrics(model, data))
    (cpu, cpu_m), (gpu, gpu_m) = results["cpu"], results["cuda"]
    assert gpu.status == cpu.status == "completed"
    assert abs(gpu.final_train_ce - cpu.final_train_ce) < 0.05
    assert abs(gpu_m["test_acc"] - cpu_m["test_acc"]) < 0.03
    assert abs(gpu_m["val_acc"] - cpu_m["val_acc"]) < 0.03


def test_evaluating_one_model_on_cuda_gives_the_cpu_metrics(tmp_path, digits_prepared, spec_factory) -> None:
    spec = spec_factory(train={"max_epochs": 2})
    cpu_data = open_run_data(digits_prepared, spec["data"], "cpu")
    model, _, _ = _train(spec, cpu_data, tmp_path, "cpu")
    on_cpu = generalization_metrics(model, cpu_data)
    on_gpu = generalization_metrics(model.to("cuda"), open_run_data(digits_prepared, spec["data"], "cuda"))
    for key, value in on_cpu.items():
        assert on_gpu[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("name", ["nin", "vgg"])
def test_a_convolutional_model_trains_on_cifar_shaped_uint8_data_on_cuda(
    tmp_path, spec_factory, name
) -> None:
    """CIFAR-10-shaped synthetic data, resident on the GPU as uint8, augmented there: one short run."""
    from qgen.data.augment import Augment

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (512, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (512,), generator=g)
    norm = Standardize(1 / 255, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    augment = Augment(crop_padding=4, flip=True)
    train = TensorSplit(x, y, norm, augment=augment, device="cuda")
    test = TensorSplit(x[:128], y[:128], norm, device="cuda")
    meta = {"checksum": "synthetic", "num_classes": 10, "input_shape": [3, 32, 32]}
    data = RunData("synthetic", meta, train, test)
    model = {"nin": {"name": "nin", "depth": 2, "width": 32}, "vgg": {"name": "vgg", "depth": 2, "width": 16}}
    spec = spec_factory(
        data={"name": "digits", "augment": {"crop_padding": 4, "flip": True}},
        model=model[name],
        quant={"method": "lsq", "weight_bits": 4, "act_bits": 4},
        optim={"batch_size": 128},
        train={"max_epochs": 1},
    )
    trained, _, result = _train(spec, data, tmp_path, "cuda")
    assert result.epochs == 1 and torch.isfinite(torch.tensor(result.final_train_ce))
    assert build_model(spec, (3, 32, 32), 10).state_dict().keys() == trained.state_dict().keys()
