"""Execute a jupytext percent-format notebook into a self-contained HTML report.

The notebook reads the experiment name and the project root from the environment
(``QGEN_EXPERIMENT``, ``QGEN_ROOT``), so one source serves every experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

from qgen.io import write_text


def execute_to_html(
    source: str | Path, experiment: str, out: str | Path, root: str | Path = ".", timeout: int = 600
) -> None:
    import jupytext
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):  # nbformat draws random cell ids: fixed ones, so rebuilds match
        cell["id"] = f"cell-{i}"
    os.environ["QGEN_EXPERIMENT"] = experiment
    os.environ["QGEN_ROOT"] = str(Path(root).resolve())
    os.environ.setdefault("MPLBACKEND", "Agg")
    ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(root)}}
    )
    exporter = HTMLExporter()
    exporter.exclude_input = True  # a report for readers: the code stays in notebooks/
    html, _ = exporter.from_notebook_node(nb)
    write_text(out, html)
