"""Training-step time of LSQ W4A4 QAT relative to float training, on CPU, measured side by side.

For each model (the MLP and the NiN on 8x8 digits-shaped input) and each execution mode (eager,
and torch.compile of the whole model as ``runtime.compile: true`` does), the float and the LSQ W4A4
variant are timed in interleaved rounds: every round
times K optimizer steps of each variant back to back, so machine noise hits both alike. The ratio
is computed per round (LSQ / float) and reported as median and interquartile range.

    python benchmarks/step_time.py                 # defaults: 15 rounds of 20 steps, 1 thread
    python benchmarks/step_time.py --modes eager   # eager only
    python benchmarks/step_time.py --kernels       # qgen's LSQ beside PyTorch's fused kernel

Target (issues 2 and 16): LSQ W4A4 step <= 1.2x the float step (the NiN, eager as the pipeline runs).

``--kernels`` runs every quantizer of the NiN LSQ W4A4 model on the tensors it sees in training (its
input, its step |s| and the gradient arriving from above, captured by hooks) through qgen's
``fake_quantize`` and through ``torch._fake_quantize_learnable_per_tensor_affine`` (zero point 0,
range [-Q_N, Q_P], grad_factor g), forward and backward, in interleaved rounds, and counts where the
two disagree: output values, the gradient reaching v, and the step gradient (relative difference).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from qgen.models import build_model
from qgen.quant import LSQQuantizer, fake_quantize, init_quantizers

MODELS = {
    "mlp 64-512-512-10": {"name": "mlp", "depth": 2, "width": 512},
    "nin depth 2, 100 ch": {"name": "nin", "depth": 2, "width": 4, "base_width": 25},
}
QUANT = {
    "float": {"method": "float"},
    "lsq_w4a4": {
        "method": "lsq",
        "weight_bits": 4,
        "act_bits": 4,
        "per_channel": False,
        "first_layer": "8bit",
        "last_layer": "8bit",
    },
}


def make_step(model_spec: dict[str, Any], quant: dict[str, Any], batch: int, mode: str):
    torch.manual_seed(0)
    model = build_model({"model": model_spec, "quant": quant}, (1, 8, 8), 10)
    x = torch.randn(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    init_quantizers(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fwd = torch.compile(model) if mode == "compiled" else model

    def step() -> None:
        loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5 if mode == "eager" else 10):  # warm-up (and compilation)
        step()
    step.model = model  # type: ignore[attr-defined]
    return step


def time_steps(step, k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - t0) / k


def interleaved(steps: dict[str, Any], rounds: int, k: int) -> dict[str, list[float]]:
    """Seconds per step of every variant, ``rounds`` times ``k`` steps, the variants taking turns in
    each round so that a slow phase of the machine hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, k))
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def quantizer_inputs(model_spec: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    """What every LSQ quantizer of the model sees in one training step (after 5 warm-up steps): its
    input v, its step |s|, Q_N, Q_P, g and the gradient of the loss with respect to its output."""
    step = make_step(model_spec, QUANT["lsq_w4a4"], batch, "eager")
    model = step.model  # type: ignore[attr-defined]
    seen: list[dict[str, Any]] = []

    def hook(name: str, quantizer: LSQQuantizer, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        v = inputs[0].detach().clone()
        rec = {"name": name, "v": v, "s": quantizer.step_for(v).clone(), "qn": quantizer.qn}
        rec.update(qp=quantizer.qp, g=quantizer.grad_scale(v))
        out.register_hook(lambda grad: rec.__setitem__("grad", grad.detach().clone()))
        seen.append(rec)

    handles = [
        m.register_forward_hook(functools.partial(hook, name))
        for name, m in model.named_modules()
        if isinstance(m, LSQQuantizer)
    ]
    step()
    for handle in handles:
        handle.remove()
    return seen


def torch_learnable(v: torch.Tensor, s: torch.Tensor, qn: int, qp: int, g: float) -> torch.Tensor:
    return torch._fake_quantize_learnable_per_tensor_affine(v, s, torch.zeros(1), -qn, qp, g)


def kernels(model_spec: dict[str, Any], batch: int, rounds: int, k: int) -> None:
    """qgen's LSQ beside PyTorch's fused kernel on the model's own tensors (see the module docstring)."""
    kinds = {"qgen": fake_quantize, "torch": torch_learnable}
    print(
        f"{'quantizer':<20} {'shape':<18} {'qgen us':>8} {'torch us':>9} "
        f"{'values differ':>14} {'dv differ':>10} {'ds rel diff':>12}"
    )
    totals = dict.fromkeys(kinds, 0.0)
    for rec in quantizer_inputs(model_spec, batch):
        v, s, grad = rec["v"], rec["s"], rec["grad"]
        results = {}

        def run(fn, v=v, s=s, grad=grad, rec=rec):
            vv, ss = v.clone().requires_grad_(), s.clone().requires_grad_()
            out = fn(vv, ss, rec["qn"], rec["qp"], rec["g"])
            out.backward(grad)
            return out.detach(), vv.grad, ss.grad

        for name, fn in kinds.items():
            results[name] = run(fn)
        times = interleaved({name: (lambda fn=fn: run(fn)) for name, fn in kinds.items()}, rounds, k)
        med = {name: 1e6 * statistics.median(t) for name, t in times.items()}
        for name in kinds:
            totals[name] += med[name]
        (out_a, dv_a, ds_a), (out_b, dv_b, ds_b) = results["qgen"], results["torch"]
        rel = ((ds_a - ds_b).abs() / ds_a.abs().clamp_min(1e-30)).item()
        print(
            f"{rec['name']:<20} {tuple(v.shape)!s:<18} {med['qgen']:>8.1f} {med['torch']:>9.1f} "
            f"{int((out_a != out_b).sum()):>14d} {int((dv_a != dv_b).sum()):>10d} {rel:>12.2e}"
        )
    print(f"{'total (fwd + bwd)':<39} {totals['qgen']:>8.1f} {totals['torch']:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument(
        "--kernels", action="store_true", help="qgen's LSQ beside PyTorch's fused kernel (the NiN's tensors)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels:
        print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, NiN LSQ W4A4")
        kernels(MODELS["nin depth 2, 100 ch"], args.batch, args.rounds, 10 * args.steps)
        return
    modes = args.modes
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
        f"{args.rounds} rounds x {args.steps} steps, interleaved"
    )
    print(
        f"{'model':<22} {'mode':<9} {'float ms/step':>14} {'lsq ms/step':>12} "
        f"{'ratio median':>13} {'ratio IQR':>15}"
    )
    for label, model_spec in MODELS.items():
        for mode in modes:
            steps = {q: make_step(model_spec, spec, args.batch, mode) for q, spec in QUANT.items()}
            times = interleaved(steps, args.rounds, args.steps)
            ratios = [b / a for a, b in zip(times["float"], times["lsq_w4a4"], strict=True)]
            lo, med, hi = quartiles(ratios)
            print(
                f"{label:<22} {mode:<9} {1e3 * statistics.median(times['float']):>14.3f} "
                f"{1e3 * statistics.median(times['lsq_w4a4']):>12.3f} {med:>12.2f}x {lo:>7.2f}–{hi:.2f}x"
            )


if __name__ == "__main__":
    main()
