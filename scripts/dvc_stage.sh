#!/bin/sh
# The command of every stage in dvc.yaml: runs `python -m qgen.dvc_stage STAGE [EXPERIMENT]`.
# DVC runs stage commands with the caller's PATH, so this finds the project's Python the way
# scripts/bootstrap.sh installs it: $QGEN_PYTHON if set, else $QGEN_VENV/bin/python (default .venv),
# else python3 on PATH (an activated virtualenv or conda environment).
set -eu
if [ -n "${QGEN_PYTHON:-}" ]; then
  py=$QGEN_PYTHON
elif [ -x "${QGEN_VENV:-.venv}/bin/python" ]; then
  py=${QGEN_VENV:-.venv}/bin/python
else
  py=python3
fi
exec "$py" -m qgen.dvc_stage "$@"
