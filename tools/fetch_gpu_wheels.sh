#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that the GPU test machine lacks, so that
# tools/gpu_check.sh can install them there offline. That machine has Python 3.12,
# PyTorch, JAX, numpy, scikit-learn, matplotlib, h5py, pyyaml and typer, but neither
# TensorFlow nor keras, optree, namex or pydantic. Run from anywhere, before a device
# session; the wheels land in .whl/ at the repo root (ignored through .git/info/exclude,
# so the device call must name .whl in its carry).
#
#   tools/fetch_gpu_wheels.sh
#   WHEEL_DIR=/tmp/whl311 WHEEL_PYTHON=3.11 tools/fetch_gpu_wheels.sh   # the same set for another Python
#
# tests/test_gpu_check.py parses WHEELS and DEVICE_HAS below: every dependency in
# pyproject.toml except tensorflow, and everything a fetched wheel requires, must be
# in one of them. Keep one version of each: two versions of one package stop pip.
set -euo pipefail
case ${1:-} in
  "") ;;
  -h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
    ;;
  *)
    echo "fetch_gpu_wheels: takes no arguments, only WHEEL_DIR, WHEEL_PYTHON and PYTHON from the environment" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."

# The wheels to bring, pinned. pydantic-core must be the exact version pydantic pins.
# typing-extensions is on the machine, but pydantic 2.14 needs >= 4.16.0, newer than
# the machine may have: a newer one is backwards compatible, an older one breaks pydantic.
WHEELS=(
  keras==3.15.1
  namex==0.1.0
  optree==0.20.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
)

# Installed on the GPU machine already (its package list in the device notes), of what
# lsjob and the wheels above need: not fetched. (torch and jax are the backends.)
DEVICE_HAS=(
  numpy scipy scikit-learn matplotlib h5py pyyaml typer click rich shellingham
  annotated-doc absl-py ml-dtypes packaging jax jaxlib torch
)

dest=${WHEEL_DIR:-.whl}
pyver=${WHEEL_PYTHON:-3.12}
python=${PYTHON:-python3}
max_mib=48 # well under the 64 MiB that may travel to the device in one call, the repo included

if [[ $dest == .whl ]] && [[ -d .git ]]; then
  mkdir -p .git/info
  grep -qxF '/.whl/' .git/info/exclude 2> /dev/null || echo '/.whl/' >> .git/info/exclude
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
echo "fetch_gpu_wheels: ${#WHEELS[@]} wheels for CPython $pyver manylinux x86_64 -> $dest/"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$staging" "${WHEELS[@]}"

# Every pin fetched exactly once, and everything the wheels require (outside extras, on
# Linux and this Python) is fetched or on the machine, pins such as pydantic-core's met.
"$python" - "$staging" "$pyver" "${WHEELS[*]}" "${DEVICE_HAS[*]}" << 'PY'
import re, sys, zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

staging, pyver, wheels, device_has = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
pins = {canonicalize_name(w.split("==")[0]): Version(w.split("==")[1]) for w in wheels}
device = {canonicalize_name(n) for n in device_has}
env = {**default_environment(), "python_version": pyver, "python_full_version": pyver + ".0",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
problems, found = [], {}
for path in sorted(staging.glob("*.whl")):
    name, version, _, _ = parse_wheel_filename(path.name)
    if name in found:
        problems.append(f"two versions of {name}: {found[name]} and {version}")
    found[name] = version
    if pins.get(name) != version:
        problems.append(f"{path.name}: not the pinned {name}=={pins.get(name)}")
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        lines = wheel.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        dep = canonicalize_name(req.name)
        if dep in pins:
            if not req.specifier.contains(pins[dep], prereleases=True):
                problems.append(f"{name} {version} needs {req}, but {dep}=={pins[dep]} is pinned")
        elif dep not in device:
            problems.append(f"{name} {version} needs {req}: neither fetched nor on the device list")
problems += [f"{name}=={pin} was not fetched" for name, pin in pins.items() if name not in found]
if problems:
    sys.exit("fetch_gpu_wheels: " + "\nfetch_gpu_wheels: ".join(problems))
PY

mkdir -p "$dest"
rm -f "$dest"/*.whl
mv "$staging"/*.whl "$dest"/
bytes=0 count=0
for wheel in "$dest"/*.whl; do
  size=$(stat -c %s "$wheel")
  printf '  %9d  %s\n' "$size" "${wheel##*/}"
  bytes=$((bytes + size)) count=$((count + 1))
done
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "fetch_gpu_wheels: $count wheels, $mib MiB in $dest/ (limit here $max_mib MiB)"
if ((bytes > max_mib * 1048576)); then
  echo "fetch_gpu_wheels: $mib MiB is too much to carry with the repo (64 MiB a call)" >&2
  exit 1
fi
