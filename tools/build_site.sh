#!/usr/bin/env bash
# Build the notebook series as a static website, executed on the demo, offline.
#
#   bash tools/build_site.sh            # the site in notebooks/_build/html
#   bash tools/build_site.sh /tmp/site  # the site in /tmp/site/_build/html
#
# 1. creates .venv (python3.11, or a python3 >= 3.11) when it is missing and
#    installs ketamine-nb with its `site` extra (Jupyter Book 1.x) into it,
#    again only when pyproject.toml has changed since the last install;
# 2. prepares the demo in the data home (KETAMINE_NB_DATA, else
#    ~/ketamine_nb_data) with `ketamine-nb demo --quiet`, which reuses a
#    prepared demo;
# 3. runs `jupyter-book build notebooks` (notebooks/_config.yml, _toc.yml):
#    every notebook is executed top to bottom on a fresh kernel of .venv's
#    Python, and the pages, their outputs, navigation and search are written
#    to DIR/_build/html. Nothing is fetched from the network while building.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

say() { printf 'tools/build_site.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

[[ $# -le 1 ]] || die "usage: bash tools/build_site.sh [DIR]"
out=${1:-notebooks}
mkdir -p "$out"
out=$(cd "$out" && pwd)

python_ok() {  # is "$1" a Python >= 3.11?
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

# --- 1. the virtualenv, the package and its site extra -----------------------
if [[ ! -x .venv/bin/python ]]; then
    py=$(command -v python3.11 || command -v python3 || true)
    [[ -n $py ]] || die "no python3.11 (nor python3) on PATH; install Python >= 3.11"
    python_ok "$py" || die "$py is $("$py" -V 2>&1); ketamine-nb needs Python >= 3.11"
    say "creating .venv with $py"
    "$py" -m venv .venv || { rm -rf .venv; die "'$py -m venv' failed (apt-get install python3-venv)"; }
fi
python_ok .venv/bin/python || die ".venv has $(.venv/bin/python -V 2>&1); remove it and run again"

stamp=.venv/.ketamine-nb-site-installed
want=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
if [[ "$want" != "$(cat "$stamp" 2>/dev/null || true)" ]] || [[ ! -x .venv/bin/jupyter-book ]] \
        || ! .venv/bin/python -c 'import ketamine_nb' 2>/dev/null; then
    say "installing ketamine-nb with its site extra into .venv (pip install -e \".[site]\")"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[site]"
    printf '%s\n' "$want" > "$stamp"
fi

# --- 2. the demo ---------------------------------------------------------------
say "preparing the demo (reused when prepared): ketamine-nb demo --quiet"
.venv/bin/ketamine-nb demo --quiet

# --- 3. the site ---------------------------------------------------------------
# The kernel: this .venv's Python, whatever other "python3" kernels are installed.
jupyter_dir=$(mktemp -d)
trap 'rm -rf "$jupyter_dir"' EXIT
mkdir -p "$jupyter_dir/kernels/python3"
cat > "$jupyter_dir/kernels/python3/kernel.json" <<EOF
{"argv": ["$repo/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3 (ipykernel)", "language": "python"}
EOF
export JUPYTER_PATH="$jupyter_dir${JUPYTER_PATH:+:$JUPYTER_PATH}"
# Figures inline as PNG outputs (an MPLBACKEND=Agg in the caller's shell would hide them).
export MPLBACKEND=module://matplotlib_inline.backend_inline
say "building the site (every notebook is executed; a few minutes)"
start=$SECONDS
.venv/bin/jupyter-book build notebooks --builder html --path-output "$out"
say "built in $((SECONDS - start)) s: open $out/_build/html/index.html"
