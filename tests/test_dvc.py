"""DVC on top of the Snakemake workflow, for real: a temporary git repository holding a copy of the
workflow and a tiny config, `dvc repro`, a push/pull round trip through the default remote, a fresh
clone that rebuilds tables and figures without training or measuring, and the rerun rules of
docs/dvc.md (measure settings, analysis settings, plot code, a new experiment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from qgen import dvc_stage
from qgen.runs_table import resolve_run_ids
from tests.conftest import REPO
from tests.test_workflow import TINY

DVC = [sys.executable, "-m", "dvc"]
# The tracked config spells out every section dvc.yaml reads as params (DVC needs the keys present).
CONFIG = TINY.replace(
    "experiments:\n",
    "analysis: {bootstrap: 100}\ndatasets: {digits: {test_fraction: 0.25, split_seed: 0}}\n"
    "robustness: {corruptions: [gaussian_noise, contrast], severities: [1, 3]}\nexperiments:\n",
).replace("    seeds: [0, 1]\n", "    seeds: [0, 1]\n    robustness: true\n")
WORKFLOW_FILES = [
    "Snakefile",
    "workflow",
    "notebooks",
    "profiles",
    "environment.yml",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "scripts/dvc_stage.sh",
    "src/qgen",  # code the stages declare as dependencies (the package itself runs from its install)
]
EXPERIMENT = "tiny"


def environment(home: Path) -> dict[str, str]:
    """HOME points the committed default remote (~/.local/share/qgen/dvc-remote) into the test."""
    return {
        **os.environ,
        "HOME": str(home),
        "MPLCONFIGDIR": matplotlib.get_configdir(),  # keep the font cache of the real home
        "DVC_NO_ANALYTICS": "1",
        "QGEN_PYTHON": sys.executable,
        "MPLBACKEND": "Agg",
        "GIT_AUTHOR_NAME": "qgen test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "qgen test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
    }


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = run([*DVC, *args], cwd, env)
    return proc.stdout + proc.stderr


def make_project(root: Path, env: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    for folder in ("data", "results", "figures"):
        (root / folder).mkdir()
        (root / folder / "README.md").write_text(f"{folder}\n")
    (root / "config").mkdir()
    (root / "config" / "default.yaml").write_text(CONFIG)
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "workflow"], root, env)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A copy keeping modification times and the local DVC cache, without the job logs written so far
    (a test then sees which jobs its own `dvc repro` ran)."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("logs"))
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return environment(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    project = make_project(tmp_path_factory.mktemp("dvc") / "project", env)
    dvc(project, env, "repro")
    return project


@pytest.fixture(scope="module")
def clone(built: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Push the built results, commit dvc.lock, clone the repository, pull, and `dvc repro`."""
    push = dvc(built, env, "push")
    run(["git", "add", "dvc.lock"], built, env)
    run(["git", "commit", "-qm", "results"], built, env)
    target = tmp_path_factory.mktemp("clone") / "project"
    run(["git", "clone", "-q", str(built), str(target)], built.parent, env)
    pulled = dvc(target, env, "pull")
    after_pull = {p.relative_to(target): p.read_bytes() for p in (target / "results/runs").rglob("*.*")}
    status = json.loads(run([*DVC, "status", "--json"], target, env).stdout)
    repro = dvc(target, env, "repro")
    return {
        "path": target,
        "push": push,
        "pull": pulled,
        "status_after_pull": status,
        "after_pull": after_pull,
        "repro": repro,
    }


def remote(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".local/share/qgen/dvc-remote"


# ---- the pipeline under DVC ---------------------------------------------------------------------


def test_repro_builds_every_table_and_figure_and_leaves_dvc_status_clean(built: Path, env) -> None:
    assert "Data and pipelines are up to date." in dvc(built, env, "status")
    for name in ("gap_by_bits", "measures_by_bits", "correlation", "bound_vs_gap", "regularization"):
        for ext in ("png", "pdf"):
            assert (built / f"figures/{EXPERIMENT}/{name}.{ext}").stat().st_size > 5000
    for name in ("gap_by_bits", "measures_by_bits"):
        for ext in ("md", "csv", "tex"):
            assert (built / f"results/{EXPERIMENT}/tables/{name}.{ext}").exists()
    assert (built / f"reports/{EXPERIMENT}.html").stat().st_size > 100_000
    runs = sorted(p.name for p in (built / "results/runs").iterdir())
    assert len(runs) == 4
    for run_id in runs:  # one final checkpoint per run, no per-epoch files
        assert sorted(p.name for p in (built / "results/runs" / run_id).iterdir()) == [
            "measures.json",
            "metrics.json",
            "model.pt",
            "robustness.json",
            "train_log.csv",
        ]
    assert (built / f"results/{EXPERIMENT}/tables/robustness.tex").exists()
    assert (built / "data/corrupted/digits/contrast.npy").exists()
    lock = (built / "dvc.lock").read_text()
    assert "results/runs" in lock and f"report@{EXPERIMENT}" in lock


def test_metrics_and_plots_show_the_pipeline_outputs(built: Path, env) -> None:
    metrics = json.loads(run([*DVC, "metrics", "show", "--json"], built, env).stdout)
    (workspace,) = metrics.values()
    summary = workspace["data"][f"results/{EXPERIMENT}/summary.json"]["data"]
    assert summary["runs"] == 4 and summary["completed"] == 4 and summary["claims_total"] >= 6
    assert {"gap_acc.FP32", "gap_acc.2", "test_acc.2"} <= set(summary)
    runs = pd.read_csv(built / f"results/{EXPERIMENT}/runs.csv", dtype={"bits": str})
    fp32 = runs[runs["bits"] == "FP32"]["gap_acc"].mean()
    assert summary["gap_acc.FP32"] == pytest.approx(fp32)
    plots = json.loads(
        run([*DVC, "plots", "show", "--json", "-o", str(built / "dvc_plots")], built, env).stdout
    )
    assert not plots.get("errors"), plots.get("errors")
    shown = set(plots["data"])
    assert f"figures/{EXPERIMENT}/gap_by_bits.png" in shown
    assert f"results/{EXPERIMENT}/bound_runs.csv" in shown
    assert not any(name.endswith(".pdf") for name in shown)


def test_every_row_of_every_table_names_its_runs(built: Path) -> None:
    res = built / "results" / EXPERIMENT
    runs = pd.read_csv(res / "runs.csv", dtype={"bits": str})
    known = set(runs["run_id"])
    csvs = sorted([*res.glob("*.csv"), *(res / "tables").glob("*.csv")])
    assert len(csvs) >= 7
    for path in csvs:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        column = "run_ids" if "run_ids" in table.columns else "run_id"
        assert column in table.columns, f"{path.name} has no run id column"
        for _, row in table.iterrows():
            if path.name == "regularization.csv" and row["model"] == "least squares":
                continue  # the synthetic least-squares check has no run behind it
            ids = resolve_run_ids(row[column], runs)
            assert ids and set(ids) <= known, f"{path.name}: {row[column]!r}"
    for path in (res / "tables").glob("*.md"):  # the last column names the runs of each row
        header, _, *rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
        assert header.split("|")[-2].strip() == "run ids" and rows, path.name
        for row in rows:
            ids = resolve_run_ids(row.split("|")[-2].strip(), runs)
            assert ids and set(ids) <= known, f"{path.name}: {row}"
    for path in (res / "tables").glob("*.tex"):
        lines = path.read_text().splitlines()
        body = lines[lines.index("\\midrule") + 1 : lines.index("\\bottomrule")]
        assert body and all("% run ids:" in line for line in body), path.name
        assert all(set(line.split("% run ids:")[1].split()) <= known for line in body), path.name
    for claim in json.loads((res / "claims.json").read_text())["claims"]:  # the runs each claim used
        ids = set(resolve_run_ids(claim["run_ids"], runs))
        assert ids and ids <= known, claim["claim"]
        assert len(ids) == (claim["n_runs_used"] or len(known)), claim["claim"]


# ---- remotes, clones and reruns -----------------------------------------------------------------


def test_push_pull_round_trip_through_the_default_remote(built: Path, clone: dict, env) -> None:
    assert (remote(env) / "files" / "md5").is_dir()  # ~ in .dvc/config resolved against HOME
    target = clone["path"]
    for rel, content in clone["after_pull"].items():
        assert (built / rel).read_bytes() == content, rel
    assert (target / "data/prepared/digits/meta.json").exists()
    # after the pull only the cheap stages, whose outputs are never pushed, are out of date
    assert set(clone["status_after_pull"]) == {
        f"{stage}@{EXPERIMENT}" for stage in ("collect", "analyse", "report", "notebook")
    }


def test_fresh_clone_rebuilds_figures_without_training_or_measuring(clone: dict, built: Path, env) -> None:
    target, repro = clone["path"], clone["repro"]
    assert "Stage 'prepare' didn't change" in repro and "Stage 'runs' didn't change" in repro
    # the first cheap stage builds every cheap file in one parallel Snakemake call; DVC then finds the other
    # stages' outputs equal to dvc.lock (the clone rebuilt the same bytes) and skips them
    assert f"Running stage 'collect@{EXPERIMENT}'" in repro
    assert "every cheap file is missing: building all" in repro
    for stage in ("analyse", "report", "notebook"):
        assert f"Stage '{stage}@{EXPERIMENT}' didn't change" in repro
    assert not (target / "logs/train").exists() and not (target / "logs/measure").exists()
    assert not (target / "logs/prepare_data").exists()
    for rel, content in clone["after_pull"].items():  # checkpoints, logs and metrics untouched
        assert (target / rel).read_bytes() == content, rel
    for name in ("gap_by_bits.png", "bound_vs_gap.pdf"):
        assert (target / f"figures/{EXPERIMENT}/{name}").stat().st_size > 5000
    # deterministic: the clone rebuilt byte-identical tables, figures and report
    for rel in ("results/tiny/tables/gap_by_bits.md", "figures/tiny/gap_by_bits.png", "reports/tiny.html"):
        assert (target / rel).read_bytes() == (built / rel).read_bytes(), rel
    assert "Data and pipelines are up to date." in dvc(target, env, "status")
    assert run(["git", "status", "--porcelain"], target, env).stdout == ""


def test_editing_analysis_settings_reruns_the_analysis_and_what_follows_only(
    clone: dict, env, tmp_path: Path
) -> None:
    project = copy_project(clone["path"], tmp_path / "project")
    config = project / "config/default.yaml"
    config.write_text(config.read_text().replace("bootstrap: 100", "bootstrap: 150"))
    repro = dvc(project, env, "repro")
    for stage in ("prepare", "runs", f"collect@{EXPERIMENT}"):
        assert f"Stage '{stage}' didn't change" in repro
    assert f"Running stage 'analyse@{EXPERIMENT}'" in repro
    assert not any((project / "logs" / d).exists() for d in ("train", "measure", "collect"))


def test_editing_robustness_settings_re_evaluates_robustness_only(clone: dict, env, tmp_path: Path) -> None:
    project = copy_project(clone["path"], tmp_path / "project")
    config = project / "config/default.yaml"
    config.write_text(config.read_text().replace("severities: [1, 3]", "severities: [3]"))
    models = {p: p.read_bytes() for p in (project / "results/runs").glob("*/model.pt")}
    repro = dvc(project, env, "repro")
    assert "Running stage 'prepare'" in repro and "Running stage 'runs'" in repro
    assert not any((project / "logs" / d).exists() for d in ("train", "measure"))
    assert len(list((project / "logs/robustness").iterdir())) == len(models)  # each run re-evaluated
    for path, content in models.items():
        assert path.read_bytes() == content
        record = json.loads(path.with_name("robustness.json").read_text())
        assert set(record["results"]["contrast"]) == {"3"}
    assert "Data and pipelines are up to date." in dvc(project, env, "status")


def test_editing_plot_code_rebuilds_only_the_plots(clone: dict, env, tmp_path: Path) -> None:
    project = copy_project(clone["path"], tmp_path / "project")
    with open(project / "src/qgen/report/figures.py", "a") as fh:
        fh.write("\n# a plot change\n")
    status = dvc(project, env, "status")
    assert f"report@{EXPERIMENT}:" in status
    assert f"analyse@{EXPERIMENT}:" not in status and f"collect@{EXPERIMENT}:" not in status
    repro = dvc(project, env, "repro")
    assert f"Running stage 'report@{EXPERIMENT}'" in repro
    assert f"Stage 'analyse@{EXPERIMENT}' didn't change" in repro
    assert f"Stage 'notebook@{EXPERIMENT}' didn't change" in repro  # identical figures
    assert not any((project / "logs" / d).exists() for d in ("train", "measure", "analyse"))


def test_measure_settings_and_a_new_experiment_rebuild_only_what_changed(
    clone: dict, env, tmp_path: Path
) -> None:
    """In a fresh clone (no Snakemake metadata): other measure settings re-measure the recorded runs
    without retraining them; a new experiment trains only its runs that do not exist yet."""
    project = copy_project(clone["path"], tmp_path / "project")
    config = project / "config/default.yaml"
    text = config.read_text().replace("examples: 400", "examples: 300")
    more = (
        text.split("experiments:\n")[1]
        .replace("  tiny:", "  more:")
        .replace("seeds: [0, 1]", "seeds: [0, 1, 2]")
    )
    config.write_text(text + more)
    status = dvc(project, env, "status")
    assert "modified:           measures" in status and "collect@more" in status
    repro = dvc(project, env, "repro")
    assert "runs not done with config/default.yaml's data and measure settings: 4 to measure" in repro
    trained = sorted(p.stem for p in (project / "logs/train").iterdir())
    assert len(trained) == 2 and all(
        rid not in {r.parent.name for r in clone["after_pull"]} for rid in trained
    )
    for rel, content in clone["after_pull"].items():
        if rel.name in ("model.pt", "metrics.json", "train_log.csv"):  # recorded runs: not retrained
            assert (project / rel).read_bytes() == content, rel
    for run_dir in (project / "results/runs").iterdir():
        assert json.loads((run_dir / "measures.json").read_text())["settings"]["examples"] == 300
    assert len(list((project / "logs/measure").iterdir())) == 4  # re-measured (new runs: in training)
    for stage in ("collect", "analyse", "report", "notebook"):
        assert f"Running stage '{stage}@more'" in repro and f"Running stage '{stage}@{EXPERIMENT}'" in repro
    assert len(pd.read_csv(project / "results/more/runs.csv")) == 6
    assert "Data and pipelines are up to date." in dvc(project, env, "status")


# ---- qgen.dvc_stage units -----------------------------------------------------------------------


def test_settle_gives_every_pushed_file_the_oldest_time(tmp_path: Path) -> None:
    files = [tmp_path / "data/prepared/d/meta.json", tmp_path / "results/runs/r/model.pt"]
    for i, path in enumerate(files):
        path.parent.mkdir(parents=True)
        path.write_text("x")
        os.utime(path, (1000 + i, 1000 + i * 50))
    other = tmp_path / "results/tiny/runs.csv"
    other.parent.mkdir(parents=True)
    other.write_text("x")
    os.utime(other, (5, 5))
    assert dvc_stage.settle_mtimes(tmp_path) == 1
    assert [p.stat().st_mtime for p in files] == [1000, 1000]
    assert other.stat().st_mtime == 5  # only the pushed outputs are settled


def test_stage_files_are_picked_by_rule_and_experiment() -> None:
    outputs = [
        ("results/runs/r1/model.pt", "train"),
        ("results/e/runs.csv", "collect"),
        ("results/e/claims.json", "analyse"),
        ("results/e/tables/claims.md", "analyse"),
        ("results/e/summary.json", "summary"),
        ("results/e/tables/gap_by_bits.md", "report"),
        ("results/e/tables/binaryconnect.md", "binaryconnect_table"),
        ("figures/e/gap_by_bits.png", "report"),
        ("reports/e.html", "notebook"),
        ("results/e2/runs.csv", "collect"),
        ("figures/e2/gap_by_bits.png", "report"),
    ]
    assert dvc_stage.experiment_files(outputs, "e", "collect") == ["results/e/runs.csv"]
    assert dvc_stage.experiment_files(outputs, "e", "analyse") == [
        "results/e/claims.json",
        "results/e/summary.json",
        "results/e/tables/claims.md",
    ]
    assert dvc_stage.experiment_files(outputs, "e", "report") == [
        "figures/e/gap_by_bits.png",
        "results/e/tables/binaryconnect.md",
        "results/e/tables/gap_by_bits.md",
    ]
    assert dvc_stage.experiment_files(outputs, "e", "notebook") == ["reports/e.html"]


def test_shards_with_runs_not_done_by_content_are_forced(tmp_path: Path) -> None:
    from qgen.config import validate_config
    from qgen.experiments import all_runs
    from qgen.io import write_json
    from qgen.shards import shard_config_runs

    config = validate_config(
        __import__("yaml").safe_load(
            CONFIG.replace("checkpoint_every: 1}", "checkpoint_every: 1, shard_runs: 2}")
        )
    )
    runs = all_runs(config)
    shards = shard_config_runs(runs, config)
    assert len(shards) >= 2
    write_json(tmp_path / "data/prepared/digits/meta.json", {"checksum": "c" * 64})
    write_json(tmp_path / "data/corrupted/digits/meta.json", {"checksum": "k" * 64})
    current = json.loads(json.dumps(config["measures"]))
    robust = {k: config["robustness"][k] for k in ("corruptions", "severities", "examples")}
    for rid in runs:  # every run done by content, and every shard recorded
        run = tmp_path / "results/runs" / rid
        for name in ("model.pt", "train_log.csv"):
            run.mkdir(parents=True, exist_ok=True)
            (run / name).write_text("x")
        prov = {"data": {"checksum": "c" * 64}, "model_sha256": "m"}
        write_json(run / "metrics.json", {"run_id": rid, "provenance": prov})
        write_json(
            run / "measures.json", {"run_id": rid, "settings": current, "provenance": {"model_sha256": "m"}}
        )
        corrupted = {"model_sha256": "m", "corrupted": {"checksum": "k" * 64}}
        write_json(run / "robustness.json", {"run_id": rid, "settings": robust, "provenance": corrupted})
    for name in shards:
        write_json(tmp_path / "results/shards" / f"{name}.json", {"runs": {}})
    assert dvc_stage.pending_shards(config, tmp_path) == ([], {})
    (first, ids), *_ = shards.items()
    write_json(
        tmp_path / "results/runs" / ids[0] / "measures.json",
        {"run_id": ids[0], "settings": {**current, "seed": 7}},
    )
    assert dvc_stage.pending_shards(config, tmp_path) == ([f"results/shards/{first}.json"], {"measure": 1})
    write_json(tmp_path / "data/corrupted/digits/meta.json", {"checksum": "o" * 64})  # another corrupted set
    stale, counts = dvc_stage.pending_shards(config, tmp_path)
    assert len(stale) == len(shards) and counts == {"measure": 1, "robustness": len(runs) - 1}
    write_json(
        tmp_path / "data/prepared/digits/meta.json", {"params": {"test_fraction": 0.3, "split_seed": 0}}
    )
    assert dvc_stage.stale_prepared(config, tmp_path) == ["data/prepared/digits/meta.json"]


def test_dag_outputs_are_asked_of_snakemake_once_per_workflow_version(tmp_path: Path, monkeypatch) -> None:
    for rel in ("Snakefile", "config/default.yaml", "workflow/rules/a.smk", "src/qgen/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    calls = []

    def summary(root: Path) -> list[tuple[str, str]]:
        calls.append(root)
        return [("results/e/runs.csv", "collect"), (f"figures/e/{len(calls)}.png", "report")]

    monkeypatch.setattr(dvc_stage, "_summary_outputs", summary)
    first = dvc_stage.dag_outputs(tmp_path)
    assert dvc_stage.dag_outputs(tmp_path) == first  # from the cache
    assert len(calls) == 1 and first == [("results/e/runs.csv", "collect"), ("figures/e/1.png", "report")]
    (tmp_path / "workflow/rules/a.smk").write_text("changed")  # a new workflow version asks again
    assert dvc_stage.dag_outputs(tmp_path)[1] == ("figures/e/2.png", "report") and len(calls) == 2
    monkeypatch.setenv("QGEN_SNAKEMAKE_ARGS", "--profile slurm")  # so do other Snakemake arguments
    dvc_stage.dag_outputs(tmp_path)
    assert len(calls) == 3


def test_settle_gives_benchmark_files_the_settled_time(tmp_path: Path) -> None:
    pushed = tmp_path / "results/runs/r/metrics.json"
    bench = tmp_path / "logs/benchmarks/shard/s.tsv"
    for path, mtime in ((pushed, 1000), (bench, 10)):
        path.parent.mkdir(parents=True)
        path.write_text("x")
        os.utime(path, (mtime, mtime))
    dvc_stage.settle_mtimes(tmp_path)
    # an older benchmark file would make Snakemake rerun its job (it counts among the job's outputs)
    assert bench.stat().st_mtime == pushed.stat().st_mtime == 1000


def test_a_cheap_stage_built_ahead_is_skipped_only_while_its_inputs_and_bytes_match(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(dvc_stage, "workflow_version", lambda root: "v1")
    records = {
        "results/runs.tsv": "run_id\tspec\n",
        "results/shards/s-0of1.json": "{}",
        "results/runs/r/metrics.json": '{"run_id": "r"}',
        "results/e/runs.csv": "run_id\nr\n",
        "figures/e/a.png": "png",
    }
    for rel, text in records.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    files = ["results/e/runs.csv", "figures/e/a.png"]
    monkeypatch.setattr(dvc_stage.subprocess, "run", lambda cmd, cwd: subprocess.CompletedProcess(cmd, 0))
    assert not dvc_stage.built_ahead(tmp_path, files)  # nothing recorded yet
    assert dvc_stage.build_ahead(tmp_path, files) == 0
    assert dvc_stage.built_ahead(tmp_path, files) and dvc_stage.built_ahead(tmp_path, files[:1])
    assert not dvc_stage.built_ahead(tmp_path, [*files, "results/e/other.csv"])  # not built ahead
    (tmp_path / "figures/e/a.png").write_text("edited")  # the file changed since
    assert not dvc_stage.built_ahead(tmp_path, files) and dvc_stage.built_ahead(tmp_path, files[:1])
    (tmp_path / "figures/e/a.png").write_text("png")
    (tmp_path / "results/runs/r/metrics.json").write_text('{"run_id": "r", "new": 1}')  # new run results
    assert not dvc_stage.built_ahead(tmp_path, files[:1])
    (tmp_path / "results/runs/r/metrics.json").write_text('{"run_id": "r"}')
    assert dvc_stage.built_ahead(tmp_path, files)
    monkeypatch.setattr(dvc_stage, "workflow_version", lambda root: "v2")  # other code or config
    assert not dvc_stage.built_ahead(tmp_path, files)
