#!/usr/bin/env bash
# Run every benchmark and print a summary.
#
#   bash benchmarks/run_all.sh             # run, print, write nothing (~20 min)
#   RECORD=1 bash benchmarks/run_all.sh    # also write benchmarks/history/<date>_<bench>.json
#                                          # and regenerate benchmarks/RESULTS.md
#   PYTHON=/path/to/python bash benchmarks/run_all.sh
#   bash benchmarks/run_all.sh bench_dask bench_import   # only these, in this order
#
# The interpreter is $PYTHON, else the project's .venv/bin/python, else python3; it must
# import ketamine_nb. bench_md_fit.py installs Debian's mrtrix3 when dwi2tensor is missing
# (as root or through sudo; otherwise it skips MRtrix3 and says so).
# BENCH_LOAD_NOTE="..." adds a note on the machine's load to every result (e.g. "shared with
# 5 other agents"); a load average >= 0.5 at the start marks the results as "busy" anyway.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'run_all.sh: %s\n' "$*" >&2; }

py="${PYTHON:-.venv/bin/python}"
if ! command -v "$py" >/dev/null 2>&1; then
    say "$py not found; using python3"
    py=python3
fi
if [[ "$py" == */* && "$py" != /* ]]; then
    py="$PWD/$py"  # absolute, but not resolved: a venv's python is a symlink
fi
if ! (cd / && "$py" -c 'import ketamine_nb, dipy') 2>/dev/null; then  # not from the checkout
    say "error: $py cannot import ketamine_nb; create the venv (bash tools/test.sh does) or set PYTHON"
    exit 2
fi

args=()
if [[ "${RECORD:-0}" == 1 ]]; then
    args+=(--record)
fi

# One run id, commit and load before the first benchmark, shared by all scripts of this run.
BENCH_RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
BENCH_LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
BENCH_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no -- ketamine_nb pyproject.toml 2>/dev/null)" ]]; then
    BENCH_COMMIT+=" (with uncommitted changes to ketamine_nb/)"
fi
BENCH_SUMMARY="$(mktemp)"
export BENCH_RUN_ID BENCH_LOADAVG BENCH_COMMIT BENCH_SUMMARY
trap 'rm -f "$BENCH_SUMMARY"' EXIT

say "python: $("$py" -c 'import sys; print(sys.executable)'); commit $BENCH_COMMIT"
say "uptime: $(uptime)"

all_benches=(bench_import bench_simulate bench_md_fit bench_registration bench_session bench_session_vs_script
             bench_dask bench_demo bench_stats bench_widgets bench_notebooks
             bench_realign bench_longitudinal bench_realdata bench_artefacts bench_viewer)
benches=("${@:-${all_benches[@]}}")
for bench in "${benches[@]}"; do
    bench="${bench%.py}"
    bench="${bench##*/}"
    if [[ ! -f "benchmarks/$bench.py" ]]; then
        say "error: no benchmarks/$bench.py (known: ${all_benches[*]})"
        exit 2
    fi
done

failed=()
for bench in "${benches[@]}"; do
    bench="${bench%.py}"
    bench="${bench##*/}"
    say "=== $bench ==="
    start=$SECONDS
    if ! "$py" "benchmarks/$bench.py" "${args[@]}"; then
        failed+=("$bench")
        echo "$bench: ERROR (the script failed; see its output above)" >>"$BENCH_SUMMARY"
    fi
    say "$bench took $((SECONDS - start)) s"
done

echo
echo "===== benchmark summary (run $BENCH_RUN_ID, load before: $BENCH_LOADAVG) ====="
cat "$BENCH_SUMMARY"
if [[ "${RECORD:-0}" == 1 ]]; then
    echo "recorded in benchmarks/history/ (one JSON per benchmark); benchmarks/RESULTS.md regenerated"
else
    echo "(not recorded; RECORD=1 writes benchmarks/history/*.json and regenerates benchmarks/RESULTS.md)"
fi
if ((${#failed[@]})); then
    say "failed: ${failed[*]}"
    exit 1
fi
