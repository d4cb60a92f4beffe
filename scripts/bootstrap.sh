#!/usr/bin/env bash
# Set up the pinned environment and run the pipeline or the tests.
#
#   bash scripts/bootstrap.sh run [snakemake args...]   # the default pipeline (embedded digits data, CPU)
#   bash scripts/bootstrap.sh test [pytest args...]     # the test suite
#
# It creates a virtual environment ($QGEN_VENV, default .venv) with python3.11 (or $PYTHON), installs
# requirements.lock there once (again only when the lock changes), installs qgen itself in editable mode,
# and then runs snakemake or pytest from that environment. Needs only Python 3.11 with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
[ $# -gt 0 ] && shift
case "$what" in
  run|test) ;;
  *) echo "usage: bash scripts/bootstrap.sh run|test [args...]" >&2; exit 2 ;;
esac

venv=${QGEN_VENV:-.venv}
python=${PYTHON:-python3.11}
export MPLBACKEND=${MPLBACKEND:-Agg} DVC_NO_ANALYTICS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

lock_hash=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ "$(cat "$venv/.qgen-lock" 2>/dev/null)" != "$lock_hash" ]; then
  echo "bootstrap: installing requirements.lock into $venv (about 5 GB, a few minutes the first time)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -r requirements.lock
  echo "$lock_hash" > "$venv/.qgen-lock"
fi
"$venv/bin/python" -m pip install --quiet --no-deps -e .

if [ "$what" = run ]; then
  exec "$venv/bin/python" -m snakemake "$@"
else
  exec "$venv/bin/python" -m pytest "$@"
fi
