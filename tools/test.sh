#!/usr/bin/env bash
# Run the whole test suite, from a fresh clone or again and again.
#
#   bash tools/test.sh                 # everything
#   bash tools/test.sh -m "not browser" -x tests/test_simulate.py   # args go to pytest
#
# 1. creates .venv with python3.11 (or a python3 >= 3.11) when it is missing;
# 2. installs ketamine-nb and its test extra into it (pip install -e ".[test]"),
#    again only when pyproject.toml has changed since the last install;
# 3. installs Debian's chromium for the browser tests when /usr/bin/chromium is
#    missing (as root, or through sudo); without it those tests are skipped,
#    except under CI=true, where a missing browser is an error;
# 4. runs pytest with the arguments given.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'tools/test.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

python_ok() {  # is "$1" a Python >= 3.11?
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

# --- 1. the virtualenv ------------------------------------------------------
if [[ ! -x .venv/bin/python ]]; then
    if command -v python3.11 >/dev/null 2>&1; then
        py=python3.11
    elif command -v python3 >/dev/null 2>&1; then
        py=python3
    else
        die "no python3.11 (nor python3) on PATH; install Python >= 3.11"
    fi
    python_ok "$py" || die "$py is $("$py" -V 2>&1); ketamine-nb needs Python >= 3.11"
    say "creating .venv with $py ($("$py" -V 2>&1))"
    rm -rf .venv
    "$py" -m venv .venv || {
        rm -rf .venv
        die "'$py -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"
    }
fi
python_ok .venv/bin/python \
    || die ".venv has $(.venv/bin/python -V 2>&1); remove .venv and run again (needs >= 3.11)"

# --- 2. the package and its test extra ---------------------------------------
stamp=.venv/.ketamine-nb-installed
want=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
have=$(cat "$stamp" 2>/dev/null || true)
installed() {  # is ketamine-nb (not just the source folder) installed in .venv?
    .venv/bin/python -c 'import importlib.metadata as m; m.version("ketamine-nb")' 2>/dev/null
}
if [[ "$want" != "$have" ]] || ! installed; then
    say "installing ketamine-nb and its test extra into .venv (pip install -e \".[test]\")"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
    printf '%s\n' "$want" > "$stamp"
fi

# --- 3. a browser for the browser tests --------------------------------------
if [[ ! -x /usr/bin/chromium ]]; then
    sudo_cmd=()
    can_install=yes
    why="apt-get install chromium did not provide /usr/bin/chromium"
    if ! command -v apt-get >/dev/null 2>&1; then
        can_install=no
        why="no apt-get: not a Debian-like system"
    elif [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo_cmd=(sudo)
        else
            can_install=no
            why="not root and no sudo"
        fi
    fi
    if [[ $can_install == yes ]]; then
        say "installing Debian's chromium for the browser tests (apt-get)"
        if ! { "${sudo_cmd[@]}" apt-get update -qq \
                && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
                    apt-get install -y -qq --no-install-recommends chromium; }; then
            can_install=no
            why="apt-get install chromium failed"
        fi
    fi
    if [[ ! -x /usr/bin/chromium ]]; then
        if [[ "${CI:-}" == true ]]; then
            die "/usr/bin/chromium is missing ($why); CI must run the browser tests"
        fi
        say "note: /usr/bin/chromium is missing ($why): the browser tests will be skipped."
        say "      Install it with: apt-get install --no-install-recommends chromium"
    fi
fi

# --- 4. the tests -------------------------------------------------------------
# Everything, the slow set included (a plain `pytest` leaves it out: pyproject's
# addopts); a -m given here replaces this one. The slowest tests are listed at the end.
exec .venv/bin/python -m pytest -m "slow or not slow" --durations=15 "$@"
