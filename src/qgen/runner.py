"""One run's work, shared by ``qgen train`` / ``qgen measure`` (one run per process) and the shard worker
(:mod:`qgen.worker`, many runs per process): train (resuming from the checkpoint), write model.pt,
evaluate into metrics.json, measure into measures.json (or into the measure cache of the per-run rules).

Whichever calls it, a run goes through the same functions with the same settings, so its files do not
depend on whether it ran alone or after other runs in a worker (tests/test_worker.py: bit for bit on CPU).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgen import io as qio

#: runtime settings of a step run by hand (the workflow sets them from config.runtime via $QGEN_RUNTIME)
RUNTIME_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "threads": 1,
    "compile": False,
    "loader_workers": 8,
    "tf32": False,
    "checkpoint_every": 5,
    "eval_batch_size": 1024,
    "shard_runs": 8,
    "parallel_runs": 1,
}


def open_data(
    meta_path: str | Path, spec: dict[str, Any], device: Any, run_cfg: dict[str, Any] | None = None
):
    """The run's splits on ``device``, after checking the prepared files and their settings (folder sets
    read by ``runtime.loader_workers`` processes)."""
    from qgen.data import load_prepared
    from qgen.data.run_data import RUN_KEYS, open_run_data

    expected = {k: v for k, v in spec["data"].items() if k != "name" and k not in RUN_KEYS}
    directory = Path(meta_path).parent
    workers = int((run_cfg or RUNTIME_DEFAULTS).get("loader_workers", RUNTIME_DEFAULTS["loader_workers"]))
    return open_run_data(load_prepared(directory, expected), spec["data"], device, directory, workers)


def provenance_record(
    run_id: str, seed: int, run_cfg: dict[str, Any], device: Any, data: Any, **extra: Any
) -> dict:
    from qgen import provenance

    return provenance.record(
        run_id=run_id,
        seed=seed,
        runtime=run_cfg,
        **provenance.device_info(device),
        data={"name": data.name, "checksum": data.checksum},
        **extra,
    )


def model_provenance(
    payload: dict[str, Any], model_path: str, run_cfg: dict[str, Any], device: Any, data: Any, **extra: Any
) -> dict:
    """Provenance of a result computed from a model file: its run, and the file's sha256 (which model file
    was evaluated or measured: qgen.shards.run_state ties measures.json to metrics.json by it)."""
    return provenance_record(
        payload["run_id"],
        payload["spec"]["seed"],
        run_cfg,
        device,
        data,
        model_sha256=qio.sha256_file(model_path),
        **extra,
    )


def measure_settings(settings_json: str) -> dict[str, Any]:
    """The measure settings of ``settings_json`` (the config's measures section), schema-checked."""
    from qgen.config import measures_schema, validate

    return validate(json.loads(settings_json), measures_schema(), where="measure settings")


def pretrained_file(spec: dict[str, Any], given: str | None = None) -> str | None:
    """The weights file of a run that starts from pretrained weights: ``given`` (``--pretrained``), else the
    workflow's $QGEN_WEIGHT_FILES entry, else $QGEN_WEIGHTS/<name>.pth; an error naming all three if none is
    set."""
    weights = spec["model"].get("pretrained")
    if weights is None:
        if given:
            raise SystemExit(f"--pretrained {given}: the run spec has no model.pretrained")
        return None
    from qgen.experiments import weights_path

    name = weights["name"]
    path = given or json.loads(os.environ.get("QGEN_WEIGHT_FILES") or "{}").get(name)
    path = path or weights_path({}, name)  # no config here: $QGEN_WEIGHTS/<name>.pth
    if path is None:
        raise SystemExit(
            f"the run starts from pretrained weights {name!r}, but no file is given: set weights.{name}.path "
            f"in the config, put the file at $QGEN_WEIGHTS/{name}.pth, or pass --pretrained FILE"
        )
    return path


def evaluate_model_file(
    model_path: str, data_meta: str, out: str, run_cfg: dict[str, Any], device: Any, data: Any = None
) -> None:
    """Write metrics.json: metrics of the quantized model, its training outcome, the precision each layer
    computes at (qgen.models.precision) and provenance.

    ``data``: the run's prepared data if already loaded and verified (else read from ``data_meta``)."""
    from qgen.measures.gap import generalization_metrics
    from qgen.metrics import objective_for
    from qgen.models import model_from_payload, precision_record, read_model_file
    from qgen.run_status import COMPLETED, DEGENERATE, DIVERGED, degenerate_reason

    t0 = time.perf_counter()
    payload = read_model_file(model_path)
    data = data if data is not None else open_data(data_meta, payload["spec"], device, run_cfg)
    model = model_from_payload(payload, data.input_shape, data.num_classes, str(device))
    fit = dict(payload["train"])
    train_seconds, resumed = fit.pop("train_seconds"), fit.pop("resumed_from_epoch")
    objective = objective_for(payload["spec"], data.task)  # segmentation: dice and loss too (measures.gap)
    metrics = generalization_metrics(model, data, run_cfg["eval_batch_size"], objective)
    if fit["status"] == DIVERGED:
        metrics = {k: float("nan") for k in metrics}
    elif fit["status"] == COMPLETED:  # training checked its train CE and accuracy; the test CE is new here
        ces = (metrics["train_ce"], metrics["test_ce"])
        reason = degenerate_reason(metrics["train_acc"], ces, data.train_class_counts())
        if reason is not None:
            fit.update(status=DEGENERATE, degenerate_reason=reason)
    fit.setdefault("degenerate_reason", None)  # (model files written before degenerate runs had a status)
    prov = model_provenance(
        payload,
        model_path,
        run_cfg,
        device,
        data,
        wall_seconds={"train": train_seconds, "evaluate": round(time.perf_counter() - t0, 3)},
        resumed_from_epoch=resumed,
        train_provenance=payload["provenance"],
    )
    qio.write_json(
        out,
        {
            "run_id": payload["run_id"],
            "status": fit.pop("status"),
            "fit": fit,
            "metrics": metrics,
            "precision": precision_record(payload["spec"]),
            "quantization": getattr(model, "qgen_quantization", None),
            "spec": payload["spec"],
            "provenance": prov,
        },
    )


def measure_model_file(
    model_path: str,
    data_meta: str,
    settings: dict[str, Any],
    run_cfg: dict[str, Any],
    device: Any,
    data: Any = None,
) -> dict[str, Any]:
    """The body of measures.json for the model in ``model_path`` (settings already validated;
    ``data`` as in :func:`evaluate_model_file`)."""
    from qgen.measures.run import measure_run
    from qgen.models import read_model_file

    t0 = time.perf_counter()
    payload = read_model_file(model_path)
    data = data if data is not None else open_data(data_meta, payload["spec"], device, run_cfg)
    status = payload["train"]["status"]
    body: dict[str, Any] = {"measures": {}, "settings": settings}
    if status == "completed":
        body = measure_run(payload, data, settings, device)
    timings = body.pop("timings", {})
    cost = body.pop("cost", None)  # peak CUDA memory and batch sizes: how it ran, not what it measured
    prov = model_provenance(
        payload,
        model_path,
        run_cfg,
        device,
        data,
        wall_seconds={"measure": round(time.perf_counter() - t0, 3), **timings},
        **({"measure_cost": cost} if cost is not None else {}),
    )
    return {"run_id": payload["run_id"], "status": status, **body, "provenance": prov}


def cache_key(settings_json: str, model_path: str) -> dict[str, str]:
    from qgen.experiments import canonical_json

    return {
        "settings": canonical_json(json.loads(settings_json)),
        "model_sha256": qio.sha256_file(model_path),
    }


def adopt_cache(
    cache: str | Path, settings_json: str, model_path: str, out: str | Path
) -> dict[str, Any] | None:
    """Write ``out`` (measures.json) from the training job's measure cache and remove the cache, when it holds
    exactly these settings for this model file; else None (a stale cache stays for the caller to remove
    after measuring). Imports no torch."""
    if not Path(cache).exists():
        return None
    cached = cached_record(str(cache), settings_json, model_path)
    if cached is None:
        print(
            "measure cache is stale (other settings or model) or unreadable; measuring again",
            file=sys.stderr,
        )
        return None
    qio.write_json(out, cached)
    Path(cache).unlink()
    print(f"{cached['run_id']}: measures computed by the training job adopted", file=sys.stderr)
    return cached


def cached_record(cache: str, settings_json: str, model_path: str) -> dict[str, Any] | None:
    """The measures.json body in a measure cache written for exactly these settings and this model file
    (its sha256), else None: a cache of other settings, of an older model or unreadable is never used."""
    try:
        cached = qio.read_json(cache)
        if cached["key"] == cache_key(settings_json, model_path):
            return cached["record"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


@dataclass
class Built:
    """What building one run did: ``action`` (``trained`` or ``measured``), the run's status, and the
    seconds of its compute (``train``, ``evaluate``, ``measure``) and of loading its data (``data``)."""

    run_id: str
    action: str
    status: str
    seconds: dict[str, float] = field(default_factory=dict)


def train_files(
    record: dict[str, Any],
    data_meta: str | Path,
    model_path: str | Path,
    log_path: str | Path,
    metrics_path: str | Path | None,
    run_cfg: dict[str, Any],
    device: Any,
    *,
    settings_json: str | None = None,
    measures_path: str | Path | None = None,
    as_cache: bool = False,
    data: Any = None,
    pretrained: str | None = None,
) -> Built:
    """Train one run (resuming from its checkpoint), write model.pt, evaluate into ``metrics_path`` and,
    with ``settings_json``, measure into ``measures_path`` (measures.json, or with ``as_cache`` the measure
    cache that the per-run measure rule adopts). The final training checkpoint is deleted only after all of
    them are written, so a crash or signal while evaluating or measuring costs a rerun of those, never the
    training. ``data``: the run's data if already open (a worker keeps it between runs of a dataset)."""
    from qgen.train import checkpoint, preemption, save_model, train_run

    spec, rid = record["spec"], record["run_id"]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if data is None:
        data = open_data(data_meta, spec, device, run_cfg)
    seconds["data"] = time.perf_counter() - t0
    out_dir = Path(model_path).parent
    ckpt = checkpoint.path_in(out_dir)
    settings = measure_settings(settings_json) if settings_json and measures_path else None
    if measures_path and as_cache:  # measures of an older model file of this run: this job writes a new one
        Path(measures_path).unlink(missing_ok=True)
    pretrained = pretrained_file(spec, pretrained)
    t0 = time.perf_counter()
    with preemption.exit_on_signal("training", f"run the same command again to resume from {ckpt}"):
        model, init_state, result = train_run(
            spec, data, out_dir, run_cfg, device, log_path=log_path, pretrained=pretrained
        )
    seconds["train"] = time.perf_counter() - t0
    kept = f"the finished training is kept in {ckpt}: run the same command again to finish without retraining"
    with preemption.exit_on_signal(f"{rid}: evaluating and measuring", kept):
        prov = provenance_record(
            rid, spec["seed"], run_cfg, device, data, wall_seconds=round(seconds["train"], 3)
        )
        save_model(model_path, model, init_state, spec, rid, result, prov)
        t0 = time.perf_counter()
        if metrics_path:  # evaluate in the same process (saves one interpreter start per run)
            evaluate_model_file(str(model_path), str(data_meta), str(metrics_path), run_cfg, device, data)
        seconds["evaluate"] = time.perf_counter() - t0
        if settings is not None:
            assert settings_json is not None and measures_path is not None
            t0 = time.perf_counter()
            print(f"{rid}: measuring", file=sys.stderr, flush=True)
            body = measure_model_file(str(model_path), str(data_meta), settings, run_cfg, device, data)
            if as_cache:
                body = {"key": cache_key(settings_json, str(model_path)), "record": body}
            qio.write_json(measures_path, body)
            seconds["measure"] = time.perf_counter() - t0
    ckpt.unlink(missing_ok=True)  # the run's model, metrics and measures are written
    print(
        f"{rid}: {result.status}, stopped by {result.stop_reason} after {result.epochs} epochs, "
        f"train CE {result.final_train_ce:.4f}",
        file=sys.stderr,
    )
    return Built(rid, "trained", result.status, seconds)


def measure_files(
    model_path: str | Path,
    data_meta: str | Path,
    settings_json: str,
    measures_path: str | Path,
    run_cfg: dict[str, Any],
    device: Any,
    *,
    data: Any = None,
) -> Built:
    """Measure a trained model.pt into ``measures_path`` (measures.json)."""
    from qgen.train import preemption

    settings = measure_settings(settings_json)
    t0 = time.perf_counter()
    with preemption.exit_on_signal("measuring", "nothing was written: run the same command again"):
        body = measure_model_file(str(model_path), str(data_meta), settings, run_cfg, device, data)
        qio.write_json(measures_path, body)
    seconds = {"measure": time.perf_counter() - t0}
    print(f"{body['run_id']}: measured ({body['status']})", file=sys.stderr)
    return Built(body["run_id"], "measured", body["status"], seconds)


def robustness_model_file(
    model_path: str, data_meta: str, corrupted_meta: str, settings_json: str, run_cfg: dict[str, Any],
    device: Any, data: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The body of robustness.json: the deployed model of ``model_path`` on the corrupted test set prepared
    in ``corrupted_meta``'s folder (qgen.measures.robustness), its input normalized like the test split."""
    from qgen.data.corrupted import load_corrupted
    from qgen.experiments import robustness_evaluation
    from qgen.io import read_json
    from qgen.measures.robustness import robustness_of
    from qgen.models import model_from_payload, read_model_file

    t0 = time.perf_counter()
    settings = json.loads(settings_json)
    payload = read_model_file(model_path)
    data = data if data is not None else open_data(data_meta, payload["spec"], device, run_cfg)
    model = model_from_payload(payload, data.input_shape, data.num_classes, str(device))
    corrupted = load_corrupted(Path(corrupted_meta).parent)
    checksum = read_json(corrupted_meta)["checksum"]
    status = payload["train"]["status"]
    body: dict[str, Any] = {"results": {}, "summary": {}}
    if status == "completed":
        if hasattr(corrupted, "images"):  # the npy layout (CIFAR-10-C, generated sets)
            body = robustness_of(model, corrupted, data.test.preprocess, device, settings)
        else:  # ImageNet-C folders
            from qgen.measures.robustness import robustness_of_folders

            workers = int(run_cfg.get("loader_workers", RUNTIME_DEFAULTS["loader_workers"]))
            size = int(data.input_shape[-1])
            body = robustness_of_folders(
                model, corrupted, data.test.preprocess, device, settings, size, workers
            )
    seconds = body.pop("seconds", 0.0)
    prov = model_provenance(
        payload, model_path, run_cfg, device, data,
        wall_seconds={"robustness": round(time.perf_counter() - t0, 3), "evaluate": seconds},
        corrupted={"checksum": checksum, "meta": str(corrupted_meta)},
    )  # fmt: skip
    return {
        "run_id": payload["run_id"],
        "status": status,
        "settings": robustness_evaluation(settings_json),
        **body,
        "provenance": prov,
    }


def robustness_files(
    model_path: str | Path,
    data_meta: str | Path,
    corrupted_meta: str | Path,
    settings_json: str,
    out: str | Path,
    run_cfg: dict[str, Any],
    device: Any,
    *,
    data: Any = None,
) -> Built:
    """Evaluate a trained model.pt on its corrupted test set into ``out`` (robustness.json)."""
    from qgen.train import preemption

    t0 = time.perf_counter()
    with preemption.exit_on_signal(
        "evaluating robustness", "nothing was written: run the same command again"
    ):
        body = robustness_model_file(
            str(model_path), str(data_meta), str(corrupted_meta), settings_json, run_cfg, device, data
        )
        qio.write_json(out, body)
    print(f"{body['run_id']}: robustness evaluated ({body['status']})", file=sys.stderr)
    return Built(body["run_id"], "robustness", body["status"], {"robustness": time.perf_counter() - t0})
