#!/usr/bin/env bash
# Proof that the job needs no TensorFlow: a fresh environment with the project's
# dependencies minus tensorflow, plus JAX, where `import tensorflow` fails, runs a
# 1-epoch smoke run under KERAS_BACKEND=jax to completion, then one with 2 data-parallel
# replicas on the CPU split in two, and checks that 2 replicas make 1 replica's training step
# (tests/replica_step.py), that a stop is acted on within a few steps (tests/run_ahead.py), and
# that compile-cache entries are written whole (tests/compile_cache_writes.py);
# the first run leaves its compiled programs in the compile
# cache (runtime.compile_cache: auto). Under torch, a 1-epoch smoke run, then torch is
# uninstalled and JAX installed, and the run's model.keras must load there with its optimizer
# state and predict what the run did (tests/model_file_loads.py): a file that names Keras's
# torch optimizer class loads only where torch is. (The GPU test machine is
# such an environment: JAX and PyTorch, no TensorFlow.) .ci/run calls this for both.
#
#   tools/check_without_tensorflow.sh [backend]     # jax (default) or torch
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-jax}
case $backend in
  jax) engine=jax ;;
  torch) engine=torch ;;
  *) echo "usage: $0 [jax|torch]" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet --no-deps -e .
# The project's own dependency list, as installed, so this stays true as it changes (and needs
# no tomllib, which Python 3.10 lacks); TensorFlow and the extras left out. Captured before use:
# a failure inside <(...) would go unseen by set -e.
deps_text=$(python - <<'PY'
import re
from importlib.metadata import requires
for dep in requires("lsjob"):
    if "extra ==" not in dep and re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower() != "tensorflow":
        print(dep)
PY
)
mapfile -t deps <<< "$deps_text"
python -m pip install --quiet "${deps[@]}" "$engine"

if python -c "import tensorflow" 2> /dev/null; then
  echo "check_without_tensorflow: tensorflow is importable here; the check would prove nothing" >&2
  exit 1
fi
echo "check_without_tensorflow: no tensorflow; lsjob run under KERAS_BACKEND=$backend"
export KERAS_HOME=$work/keras # an empty Keras cache folder: JAX's compile cache (auto) starts there
KERAS_BACKEND=$backend lsjob run specs/smoke.yaml --set train.epochs=1 --set "output.root=$work/results"
python - "$work/results/smoke/manifest.json" "$backend" "$KERAS_HOME/compile-cache" <<'PY'
import json, os, sys
manifest = json.load(open(sys.argv[1]))
assert manifest["status"] == "completed" and manifest["backend"] == sys.argv[2], manifest
assert "tensorflow" not in manifest["versions"], manifest["versions"]
if sys.argv[2] == "jax":  # compiled programs kept for the next process
    assert manifest["runtime"]["compile_cache"] == sys.argv[3], manifest["runtime"]
    entries = len(os.listdir(sys.argv[3]))
    assert entries > 10, f"{entries} entries in {sys.argv[3]}"
    print(f"check_without_tensorflow: {entries} compiled programs cached in {sys.argv[3]}")
print(f"check_without_tensorflow: completed on {manifest['backend']}, test accuracy {manifest['test_accuracy']:.3f}")
PY

if [[ $backend == jax ]]; then
  # Data parallelism (keras.distribution.DataParallel) on this CPU split into two XLA devices.
  echo "check_without_tensorflow: 2 replicas under KERAS_BACKEND=jax"
  XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax lsjob run specs/smoke.yaml \
    --set train.epochs=1 --set data.train_size=256 --set data.test_size=64 --set runtime.replicas=2 \
    --set output.run=two-replicas --set "output.root=$work/results"
  python - "$work/results/two-replicas/manifest.json" << 'PY'
import json, sys
manifest = json.load(open(sys.argv[1]))
setup = manifest["runtime"]
assert manifest["status"] == "completed" and setup["replicas"] == 2 and setup["per_replica_batch"] == 16, manifest
print(f"check_without_tensorflow: 2 replicas on {setup['replica_devices']}, global batch {setup['global_batch']}")
PY
  # The same training step on 2 replicas as on 1 (tests/replica_step.py).
  XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/replica_step.py
  # A stop checkpoints within a few steps of the device, not after all the loop queued ahead.
  KERAS_BACKEND=jax python tests/run_ahead.py
  # Compile-cache entries appear whole, so the tasks of a sweep sharing the folder cannot tear one.
  KERAS_BACKEND=jax python tests/compile_cache_writes.py
  # DataParallel splits the last, shorter evaluation batch too: a test set of 63 is refused
  # before the run directory is made, not after an epoch of training.
  status=0
  XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax lsjob run specs/smoke.yaml \
    --set data.train_size=256 --set data.test_size=63 --set runtime.replicas=2 \
    --set output.run=odd-test-set --set "output.root=$work/results" 2> "$work/odd.err" || status=$?
  if [[ $status != 2 ]] || ! grep -q "the test set (63) must be a multiple of 2" "$work/odd.err" \
    || [[ -e $work/results/odd-test-set ]]; then
    echo "check_without_tensorflow: an odd test set over 2 replicas was not refused up front (exit $status)" >&2
    cat "$work/odd.err" >&2
    exit 1
  fi
  echo "check_without_tensorflow: a test set that 2 replicas cannot split is refused up front"
fi

if [[ $backend == torch ]]; then
  # Where the model goes next (a laptop with JAX or TensorFlow) has no torch.
  echo "check_without_tensorflow: the torch run's model.keras, loaded under KERAS_BACKEND=jax without torch"
  python -m pip uninstall --quiet --yes torch
  python -m pip install --quiet jax
  KERAS_BACKEND=jax python tests/model_file_loads.py "$work/results/smoke"
fi
