#!/usr/bin/env bash
# Rebuild every bundled model package from scratch. Each family has its own
# build venv (model-building tools never enter the runtime dependencies).
# Seeded and reproducible; not run by the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENVS=${VENVS:-.venv-build}
build() {  # family
    local venv="$VENVS/$1"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "models/scripts/requirements-$1.txt"
    PYTHONPATH=. "$venv/bin/python" "models/scripts/build_$1.py"
}
for family in iris digits face person person_onnx; do
    echo "== building $family"
    build "$family"
done
echo "== drift references (drift.json beside each manifest; packed with the archive)"
ref() {  # family source package...
    local py="$VENVS/$1/bin/python" source=$2
    shift 2
    for pkg in "$@"; do PYTHONPATH=. "$py" models/scripts/drift_reference.py "$source" "models/$pkg/1"; done
}
ref iris iris iris iris_setosa iris_versicolor iris_virginica
ref digits digits digits digits_int8 digits_tflite digits_tflite_int8
ref face photos face face_onnx person person_onnx
