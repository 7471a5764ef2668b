# lsjob on an NVIDIA GPU. Build and run from the checkout:
#
#   docker build -t lsjob:0.1.0 .
#   mkdir -p results && sudo chown 1000:1000 results
#   docker run --rm --gpus all -v "$PWD/results:/results" -v lsjob-cache:/cache lsjob:0.1.0 run specs/seed-loss.yaml
#
# The job runs as UID/GID 1000 (job/k8s.py uses the same ids): ./results must be writable
# by it (the chown), or instead add --user "$(id -u):$(id -g)" and bind-mount a cache folder
# you own as well.
# Only the NVIDIA driver and the NVIDIA Container Toolkit are needed on the host. For several
# GPUs in one run (runtime.replicas), add --shm-size=1g: NCCL's buffers outgrow the default 64 MiB.

# TensorFlow's own GPU image: nvidia/cuda underneath, with the CUDA and cuDNN libraries
# this TensorFlow release was built and tested against, so the GPU stack is a combination
# its authors vouch for rather than one assembled here, and one cluster admins know.
# Pinned by tag; the same version is pinned below so pip keeps this GPU build.
ARG TF_VERSION=2.19.0
FROM tensorflow/tensorflow:${TF_VERSION}-gpu
ARG TF_VERSION

LABEL org.opencontainers.image.title="lsjob" \
      org.opencontainers.image.description="MiniGoogLeNet on CIFAR-10 with label smoothing, as a batch job"

ARG UID=1000
ARG GID=1000

# KERAS_HOME: the job finds or downloads CIFAR-10 in $KERAS_HOME/datasets, i.e. the cache volume.
# MPLCONFIGDIR: under --user "$(id -u):$(id -g)" (or Pyxis, Apptainer) HOME may be / or
# read-only, and matplotlib then warned on every run as it made a temporary cache folder.
ENV KERAS_HOME=/cache/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed, numeric, unprivileged user, so Kubernetes' runAsNonRoot can check it and
# volumes can be prepared for it. The mount points are created owned by it, so a fresh
# named volume starts out writable. (Ubuntu 24.04 bases already hold UID 1000: `ubuntu`.)
RUN if id -u ubuntu > /dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid "${GID}" lsjob \
    && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /usr/sbin/nologin lsjob \
    && mkdir -p /results /cache/keras \
    && chown -R "${UID}:${GID}" /results /cache

# As the README installs it (pip install .), without -e: the source is not kept.
COPY pyproject.toml README.md /tmp/lsjob/
COPY job /tmp/lsjob/job
RUN python3 -m pip install /tmp/lsjob "tensorflow==${TF_VERSION}" \
    && rm -rf /tmp/lsjob \
    && lsjob --help > /dev/null

# The example specs at /specs and the working directory at /, so the README's commands
# work unchanged: `run specs/seed-loss.yaml` reads /specs/seed-loss.yaml and the default
# output.root, the relative `results`, is /results: the results volume. No symlinks.
COPY specs /specs
WORKDIR /

VOLUME ["/results", "/cache"]
USER ${UID}:${GID}
ENTRYPOINT ["lsjob"]
CMD ["--help"]
