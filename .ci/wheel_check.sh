#!/usr/bin/env bash
# The install users get: build a wheel, install it into a fresh venv outside the checkout (no editable
# install, no PYTHONPATH), then run lfl --help, every subcommand's --help, a 20-step lfl train on digits
# and every README python block from that install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.13.0 || "$py" -m pip install -q torch
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$root"
wheel="$(ls "$work"/dist/onlinelfl-*.whl)"
"$py" -m pip install -q "$wheel[sklearn]"
cd "$work"
# The packages must come from the wheel, not from the checkout.
"$py" - "$root" <<'PY'
import sys, cli, losses, toolkit, toolkit.runs
root = sys.argv[1]
for module in (cli, losses, toolkit, toolkit.runs):
    assert not module.__file__.startswith(root), f"{module.__name__} imported from the checkout: {module.__file__}"
print("imports from", toolkit.__file__)
PY
lfl="$work/venv/bin/lfl"
"$lfl" --version
"$lfl" --help > /dev/null
for command in train study export plot compare bench datasets; do "$lfl" "$command" --help > /dev/null; done
"$lfl" train --dataset digits --model mlp --steps 20 --out "$work/run" --quiet
test -f "$work/run/results.json"
"$lfl" export "$work/run" > /dev/null
# The README's own-loop criterion reads approx.json, as "Take a learned loss home" exports it.
"$lfl" train --dataset digits --model mlp --loss adalfl --init-steps 10 --steps 20 --out "$work/adalfl" --quiet
"$lfl" export "$work/adalfl" --approx --format json -o "$work/approx.json"
cp "$root/README.md" "$work/README.md"
"$py" "$root/.ci/readme_blocks.py" "$work/README.md"
echo "wheel check passed: $(basename "$wheel")"
