set shell := ["bash", "-euo", "pipefail", "-c"]

py := env("PYTHON", ".venv/bin/python")

# list the recipes
default:
    @just --list

# install natib and its dev tools into .venv
install:
    python3 -m venv .venv
    .venv/bin/pip install -e '.[dev,nas]'

# run the test suite (pass pytest arguments, e.g. `just test -k grid`)
test *args:
    {{py}} -m pytest {{args}}

# render every deploy/ overlay and check it offline: Kubernetes schemas, our CRDs, examples, RBAC, house rules
deploy-check *args:
    {{py}} deploy/check.py {{args}}

# ruff and mypy
lint:
    {{py}} -m ruff check .
    {{py}} -m mypy algorithms messages runtime

# measure natib's per-trial overhead against spawning the same process directly
bench *args:
    {{py}} bench/overhead.py {{args}}

# run the random-search example end to end
demo:
    .venv/bin/natib run examples/random.yaml --replace
