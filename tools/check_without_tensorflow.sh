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
#   tools/check_without_tensorflow.sh [jax|torch] [VENV]       # jax by default
#   tools/check_without_tensorflow.sh --prepare jax|torch VENV
#
# --prepare only builds the environment, at VENV (a new folder), for a later check to run in:
# .ci/run builds both while the tests run, a download mostly, where building them after took 1.5 minutes.
set -euo pipefail
usage="usage: $0 [jax|torch] [VENV]  or  $0 --prepare jax|torch VENV"
prepare=false
if [[ ${1:-} == --prepare ]]; then
  prepare=true
  shift
  (($# == 2)) || { echo "$usage" >&2; exit 2; }
fi
(($# <= 2)) || { echo "$usage" >&2; exit 2; }
backend=${1:-jax}
case $backend in
  jax) engine=jax ;;
  torch) engine=torch ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
venv=
if (($# == 2)); then
  venv=$(realpath -m "$2") # before the cd below, as the caller meant it
fi
cd "$(dirname "$0")/.."

# A venv with the project, its dependencies minus TensorFlow and the extras, and $engine. The
# engine's name is written last: it marks a finished environment, and for which backend.
build_env() {
  python3 -m venv "$1"
  # shellcheck disable=SC1091
  . "$1/bin/activate"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet --no-deps -e .
  # The project's own dependency list, as installed, so this stays true as it changes (and needs
  # no tomllib, which Python 3.10 lacks). Captured before use: a failure inside <(...) would go
  # unseen by set -e.
  local deps_text deps
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
  echo "$engine" > "$1/lsjob-engine"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if $prepare; then
  if [[ -e $venv ]]; then
    echo "check_without_tensorflow: $venv exists; --prepare makes a new folder: remove it or name another" >&2
    exit 2
  fi
  build_env "$venv"
  echo "check_without_tensorflow: a $backend environment without tensorflow is ready in $venv"
  exit 0
elif [[ $venv ]]; then
  if [[ $(cat "$venv/lsjob-engine" 2> /dev/null) != "$engine" ]]; then
    echo "check_without_tensorflow: $venv is no finished $backend environment: make one with $0 --prepare $backend $venv" >&2
    exit 2
  fi
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
else
  build_env "$work/venv"
fi

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
  rm "$VIRTUAL_ENV/lsjob-engine" # no longer a torch environment
  python -m pip uninstall --quiet --yes torch
  python -m pip install --quiet jax
  KERAS_BACKEND=jax python tests/model_file_loads.py "$work/results/smoke"
fi
