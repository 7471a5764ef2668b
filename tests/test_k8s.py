"""Kubernetes manifests (job/k8s.py): current, schema-valid, and doing what users rely on.

The checked-in k8s/*.yaml must be exactly what job/k8s.py renders; when a test here
says they are stale, regenerate them with `python -m job.k8s --regenerate`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from job import k8s, sweep
from job.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, SpecError
from job.spec import load_spec

try:
    import kubernetes_validate
except ImportError:  # a test dependency: fail, never skip
    kubernetes_validate = None

CHECKED_IN = ["job.yaml", "sweep.yaml", "volumes.yaml"]
SWEEP_SPEC = ROOT / "specs" / "sweep-factors.yaml"
SINGLE_SPEC = ROOT / "specs" / "seed-loss.yaml"
# The oldest Kubernetes the manifests claim to support, and the newest schema we have.
VERSIONS = [f"{k8s.MIN_KUBERNETES}.0", "latest"]


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def job_of(text: str) -> dict:
    return next(d for d in docs(text) if d["kind"] == "Job")


def container_command(manifest: dict) -> list[str]:
    """The command line of the Job's lsjob container in a loaded manifest."""
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container["args"]]


def pod_of(text: str) -> dict:
    return job_of(text)["spec"]["template"]["spec"]


def validate(text: str) -> None:
    if kubernetes_validate is None:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]' (package kubernetes-validate)")
    for version in VERSIONS:
        version = kubernetes_validate.latest_version() if version == "latest" else version
        for doc in docs(text):
            # Strict: an unknown or misspelt field is an error, not silently dropped by the API server.
            kubernetes_validate.validate(doc, version, strict=True)


def fresh_renders() -> dict[str, str]:
    """Manifests with every option away from its default, single and sweep."""
    options = {
        "image": "ghcr.io/someone/lsjob@sha256:" + "a" * 64,
        "results_claim": "team-results",
        "cache_claim": "team-cache",
        "backoff_limit": 1,
        "grace_seconds": 300,
        "cpu": "2",
        "memory": "12Gi",
    }
    return {
        "single": k8s.render(ROOT / "specs" / "smoke.yaml", name="my-run", **options),
        "sweep": k8s.render(ROOT / "specs" / "smoke-sweep.yaml", name="my-sweep", parallelism=2, **options),
    }


# ------------------------------------------------------------------ one source of truth


@pytest.mark.parametrize("file", CHECKED_IN)
def test_checked_in_manifests_are_what_render_produces(file):
    checked_in = (ROOT / "k8s" / file).read_text(encoding="utf-8")
    assert checked_in == k8s.example(file), f"k8s/{file} is stale: run `python -m job.k8s --regenerate`"


def test_every_example_is_checked_in():
    assert sorted(["volumes.yaml", *k8s.EXAMPLES]) == sorted(CHECKED_IN)
    assert sorted(p.name for p in (ROOT / "k8s").glob("*.yaml")) == sorted(CHECKED_IN)


def test_render_is_deterministic_and_independent_of_the_spec_path(monkeypatch):
    monkeypatch.chdir(ROOT)
    relative = k8s.render("specs/seed-loss.yaml", image=k8s.EXAMPLE_IMAGE)
    assert relative == k8s.render(SINGLE_SPEC, image=k8s.EXAMPLE_IMAGE) == k8s.example("job.yaml")


# ------------------------------------------------------------------ schema


@pytest.mark.parametrize("file", CHECKED_IN)
def test_checked_in_manifests_validate_strictly(file):
    validate((ROOT / "k8s" / file).read_text(encoding="utf-8"))


def test_fresh_manifests_with_other_options_validate_strictly():
    for text in fresh_renders().values():
        validate(text)
    validate(k8s.render_volumes(results_claim="a", cache_claim="b", storage_class="nfs", results_size="1Ti"))


def test_strict_validation_catches_a_misspelt_field():
    job = job_of(k8s.example("job.yaml"))
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(Exception, match="securityContxt"):
        validate(yaml.safe_dump(job))


# ------------------------------------------------------------------ what users rely on


def test_single_run_is_an_indexed_job_of_one_completion():
    # So the pod that replaces a failed one keeps its hostname, <name>-0, and knows the run lock
    # that pod left on a shared volume as its own earlier attempt's (rundir._replaced_pod).
    job = job_of(k8s.example("job.yaml"))["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 1, 1)
    assert job["backoffLimitPerIndex"] == k8s.BACKOFF_LIMIT and "backoffLimit" not in job
    assert [r["action"] for r in job["podFailurePolicy"]["rules"]] == ["Ignore", "Ignore", "FailJob"]


def test_sweep_is_an_indexed_job_with_one_completion_per_point():
    job = job_of(k8s.example("sweep.yaml"))["spec"]
    count = len(sweep.points(load_spec(SWEEP_SPEC)))
    assert count > 1
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == count
    assert job["parallelism"] == count  # default: every point at once, pods wait for GPUs
    assert job["backoffLimitPerIndex"] == k8s.BACKOFF_LIMIT
    assert "backoffLimit" not in job  # with a per-index limit, a global one would cut the sweep short
    # The CLI agrees on the count (the contract the Slurm templates use too).
    out = subprocess.run([sys.executable, "-m", "job", "sweep", "count", str(SWEEP_SPEC)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert int(out.stdout) == count


def test_a_sweep_stays_within_the_api_servers_limits_on_an_indexed_job(tmp_path):
    # The API server refuses an Indexed Job with more than 10^5 pods at once, or with more than 10^5
    # completions and per-index retries but more than 10^4 at once or no maxFailedIndexes.
    too_many = k8s.render(SWEEP_SPEC, image="x", parallelism=100_000)  # a small sweep: 10^5 at once is allowed
    assert job_of(too_many)["spec"]["parallelism"] == 100_000
    with pytest.raises(SpecError, match="at most 100000 pods of an Indexed Job at once; give --parallelism 100000"):
        k8s.render(SWEEP_SPEC, image="x", parallelism=100_001)
    big = tmp_path / "big.yaml"
    big.write_text(f"sweep:\n  - train.seed: {list(range(100_001))}\n")
    job = job_of(k8s.render(big, image="x"))["spec"]
    assert (job["completions"], job["parallelism"], job["maxFailedIndexes"]) == (100_001, 10_000, 10_000)
    assert "maxFailedIndexes" not in job_of(k8s.example("sweep.yaml"))["spec"]  # it stops a Job; only where needed
    with pytest.raises(SpecError, match="at most 10000 pods of an Indexed Job of more than 100000 sweep points"):
        k8s.render(big, image="x", parallelism=10_001)


def test_options_reach_the_manifest():
    fresh = fresh_renders()
    job = job_of(fresh["sweep"])
    assert job["metadata"]["name"] == "my-sweep"
    assert job["spec"]["parallelism"] == 2
    assert job["spec"]["completions"] == len(sweep.points(load_spec(ROOT / "specs" / "smoke-sweep.yaml")))
    assert job["spec"]["backoffLimitPerIndex"] == 1
    pod = pod_of(fresh["sweep"])
    assert pod["terminationGracePeriodSeconds"] == 300
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["results"] == "team-results" and claims["cache"] == "team-cache"
    resources = pod["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "12Gi"}, "limits": {"memory": "12Gi", "nvidia.com/gpu": 1}}
    assert job_of(fresh["single"])["spec"]["backoffLimitPerIndex"] == 1


def resources_for(tmp_path, runtime: str, **options) -> dict:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"runtime:\n{runtime}\n")
    return pod_of(k8s.render(spec, image="r/l:1", **options))["containers"][0]["resources"]


def test_a_multi_gpu_run_gets_a_gpu_per_replica_and_resources_to_match(tmp_path):
    assert resources_for(tmp_path, "  replicas: 4") == {
        "requests": {"cpu": "16", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": 4},
    }
    assert resources_for(tmp_path, "  replicas: all", gpus=8)["limits"]["nvidia.com/gpu"] == 8
    # The exponent form, as the Kubernetes docs write 129e6 (here 129e8: 12.9 GB).
    requests = resources_for(tmp_path, "  replicas: 1", memory="129e8", cpu="2e0")["requests"]
    assert requests == {"cpu": "2e0", "memory": "129e8"}
    # 1Gi, the least a pod may have, and the suffixes the API takes.
    for quantity in ("1Gi", "1024Mi", "16Gi", "16G", "16000M", "1.5Ti", ".5Ti", "1073741824", "1E", "1Ei"):
        assert resources_for(tmp_path, "  replicas: 1", memory=quantity)["requests"]["memory"] == quantity
    assert resources_for(tmp_path, "  replicas: 2", gpus=2, cpu="3500m", memory="20Gi") == {
        "requests": {"cpu": "3500m", "memory": "20Gi"},
        "limits": {"memory": "20Gi", "nvidia.com/gpu": 2},
    }
    validate(k8s.render(tmp_path / "spec.yaml", image="r/l:1", gpus=2, cpu="3500m", memory="20Gi"))


def test_node_selectors_and_tolerations_place_the_pods_on_the_gpu_nodes_asked_for():
    text = k8s.render(
        SINGLE_SPEC,
        image="r/l:1",
        node_selector=["nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "pool=train"],
        tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml", "spot=true:NoExecute"],
    )
    pod = pod_of(text)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "train"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},  # any value
        {"key": "dedicated", "operator": "Equal", "value": "ml"},  # any effect
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"},
    ]
    validate(text)
    plain = pod_of(k8s.example("job.yaml"))
    assert "nodeSelector" not in plain and "tolerations" not in plain
    # kubectl's YAML reader takes 1e3 for a number, which a label value cannot be: quoted.
    text = k8s.render(SINGLE_SPEC, image="r/l:1", node_selector=["gen=1e3"], tolerations=["t=2e5:NoSchedule"])
    assert "gen: '1e3'" in text and "value: '2e5'" in text
    # Nor y (a boolean to it), nor what Go reads as a number once it drops every _ (0O17 is 15).
    values = ["0o17", "0O17", "0X1F", "0B11", "0_x1F", "1_0.5", "1_000"]
    selectors = ["gpu=y", *(f"rev{i}={v}" for i, v in enumerate(values))]
    text = k8s.render(SINGLE_SPEC, image="r/l:1", node_selector=selectors, tolerations=["t=N:NoSchedule"])
    assert "gpu: 'y'" in text and "value: 'N'" in text
    assert all(f"rev{i}: '{v}'" in text for i, v in enumerate(values))
    assert pod_of(text)["nodeSelector"]["rev4"] == "0_x1F"  # and reads back as written


@pytest.mark.parametrize(
    "options, message",
    [
        ({"node_selector": ["pool"]}, "'pool' is not KEY=VALUE"),
        ({"node_selector": ["pool=a", "pool=b"]}, "two values (a and b)"),
        ({"node_selector": ["-pool=a"]}, "'-pool' is not a label key"),
        ({"node_selector": ["pool=a b"]}, "'a b' is not a label value"),
        ({"node_selector": ["Bad_Prefix/pool=a"]}, "is not a label key"),
        ({"tolerations": ["nvidia.com/gpu:NoSchedul"]}, "effect must be one of NoSchedule, PreferNoSchedule"),
        ({"tolerations": [":NoSchedule"]}, "'' is not a label key"),
        ({"tolerations": ["k=" + "v" * 64]}, "is not a label value"),
    ],
)
def test_node_selectors_and_tolerations_that_kubernetes_would_refuse_are_refused(options, message):
    with pytest.raises(SpecError) as e:
        k8s.render(SINGLE_SPEC, image="r/l:1", **options)
    assert message in str(e.value) and e.value.exit_code == EXIT_BAD_INPUT


def test_a_multi_gpu_pod_gets_shared_memory_for_nccl_and_a_one_gpu_pod_none(tmp_path):
    # The container runtime's 64 MiB /dev/shm is too small for NCCL's buffers.
    spec = tmp_path / "spec.yaml"
    spec.write_text("runtime:\n  replicas: 2\n")
    pod = pod_of(k8s.render(spec, image="r/l:1"))
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    validate(k8s.render(spec, image="r/l:1"))
    single = pod_of(k8s.example("job.yaml"))
    assert "shm" not in [v["name"] for v in single["volumes"]]
    assert "/dev/shm" not in [m["mountPath"] for m in single["containers"][0]["volumeMounts"]]


@pytest.mark.parametrize(
    "runtime, options, message",
    [
        # The run would refuse to start on fewer devices, or leave GPUs idle on more.
        ("  replicas: 4", {"gpus": 2}, "--gpus 2 but runtime.replicas is 4"),
        ("  replicas: 1", {"gpus": 2}, "--gpus 2 but runtime.replicas is 1"),
        ("  replicas: all", {}, "--gpus N"),
        ("  replicas: all", {"gpus": 0}, "at least 1 GPU"),
        ("  replicas: 1", {"cpu": "0"}, "cpu '0'"),
        ("  replicas: 1", {"cpu": "four"}, "cpu 'four'"),
        ("  replicas: 1", {"memory": "8GB"}, "memory '8GB'"),
        ("  replicas: 1", {"memory": "0Gi"}, "memory '0Gi'"),
        ("  replicas: 1", {"memory": "16K"}, "memory '16K'"),  # kubectl's refusal: 16k or 16Ki
        # A unit left off: 16 bytes, a pod that can never start.
        ("  replicas: 1", {"memory": "16"}, "memory '16' is 16 bytes, below the 1Gi"),
        ("  replicas: 1", {"memory": "1073741823"}, "GB): give a unit, e.g. 16Gi"),
        # A unit given, too small: asking for one would name the wrong mistake.
        (
            "  replicas: 1",
            {"memory": "512Mi"},
            "is 536,870,912 bytes, below the 1Gi this job needs at the least "
            "(its imports alone take 650 MiB; a full-size run peaks at 1.6 GB): "
            "give 1Gi or more",
        ),
        ("  replicas: 1", {"memory": "1G"}, "GB): give 1Gi or more"),
        ("  replicas: 1", {"memory": "129e6"}, "below the 1Gi"),
        ("  replicas: 1", {"memory": "1e400"}, "memory '1e400' is too large to be a number of bytes"),
        # Each pod would exit 2 ("does not split evenly") on the cluster.
        ("  replicas: all\ntrain:\n  batch_size: 64", {"gpus": 3}, "64 does not split evenly across the 3 GPUs"),
        # So would a later sweep point's alone.
        ("  replicas: all\nsweep:\n  train.batch_size: [48, 64]", {"gpus": 3}, "64 does not split evenly"),
    ],
)
def test_gpus_cpu_and_memory_that_cannot_work_are_refused(tmp_path, runtime, options, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        resources_for(tmp_path, runtime, **options)


@pytest.mark.parametrize("options, message", [
    ({"grace_seconds": 0}, "--grace-seconds 0: give a pod at least 1 second"),  # killed before any checkpoint
    ({"backoff_limit": -1}, "--backoff-limit -1: give 0 or more"),
])  # fmt: skip
def test_a_grace_period_or_backoff_limit_the_cli_would_refuse_is_refused_by_render_too(options, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        k8s.render(SINGLE_SPEC, image="r/l:1", **options)


def test_a_sweep_over_replica_counts_is_refused_since_its_pods_share_one_template(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("sweep:\n  runtime.replicas: [1, 2]\n")
    with pytest.raises(SpecError, match=r"different runtime.replicas \(1, 2\).*one spec per replica count"):
        k8s.render(spec, image="r/l:1")
    spec.write_text("sweep:\n  runtime.replicas: [all, 2]\n")  # all would take the same 2 GPUs: one run twice
    with pytest.raises(SpecError, match=r"different runtime.replicas \(2, all\)"):
        k8s.render(spec, image="r/l:1", gpus=2)
    spec.write_text("runtime:\n  replicas: 2\nsweep:\n  smoothing.factor: [0.1, 0.2]\n")
    assert pod_of(k8s.render(spec, image="r/l:1"))["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


@pytest.mark.parametrize("file", ["job.yaml", "sweep.yaml"])
def test_pod_gets_one_gpu_runs_as_the_image_user_and_never_escalates(file):
    pod = pod_of(k8s.example(file))
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_arg("UID") == k8s.UID
    assert pod["securityContext"]["fsGroup"] == dockerfile_arg("GID") == k8s.GID  # the claims are writable
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("file", ["job.yaml", "sweep.yaml"])
def test_grace_period_leaves_time_to_checkpoint(file):
    # SIGTERM waits for the running validation pass and checkpoint; the default 30 s is tight.
    assert pod_of(k8s.example(file))["terminationGracePeriodSeconds"] == k8s.GRACE_SECONDS >= 60


@pytest.mark.parametrize("file", ["job.yaml", "sweep.yaml"])
def test_failure_policy_retries_preemption_and_fails_fast_on_bad_input(file):
    job = job_of(k8s.example(file))["spec"]
    is_sweep = file == "sweep.yaml"  # as render decides: by the spec, not by the count of points
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [EXIT_INTERRUPTED]
    assert rules[2]["action"] == ("FailIndex" if is_sweep else "FailJob")
    assert rules[2]["onExitCodes"]["values"] == [EXIT_BAD_INPUT, EXIT_DIVERGED]
    for rule in rules[1:]:
        codes = rule["onExitCodes"]
        # What the API server checks and the schema does not: a named container, sorted
        # unique values, never 0 with In.
        assert codes["containerName"] == pod_of(k8s.example(file))["containers"][0]["name"]
        assert codes["operator"] == "In" and 0 not in codes["values"]
        assert codes["values"] == sorted(set(codes["values"]))
    # A replacement pod never overlaps the one it replaces (one writer per run directory).
    assert job["podReplacementPolicy"] == "Failed"


def test_the_container_runs_the_spec_from_its_config_map():
    for file, spec_file, root in [("job.yaml", SINGLE_SPEC, "/results"),
                                  ("sweep.yaml", SWEEP_SPEC, "/results/sweep-factors")]:  # fmt: skip
        text = k8s.example(file)
        config_map = next(d for d in docs(text) if d["kind"] == "ConfigMap")
        pod = pod_of(text)
        (container,) = pod["containers"]
        command = ["lsjob", "run", "/spec/spec.yaml", "--set", f"output.root={root}"]
        assert container_command(job_of(text)) == command
        # The spec ships as written, and is mounted where the command reads it.
        assert config_map["data"] == {"spec.yaml": spec_file.read_text(encoding="utf-8")}
        assert config_map["immutable"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/spec"]]["configMap"]["name"] == config_map["metadata"]["name"]
        assert "persistentVolumeClaim" in volumes[mounts["/results"]]
        # The dataset cache: KERAS_HOME is on the cache claim, as in the image.
        keras_home = {e["name"]: e["value"] for e in container["env"]}["KERAS_HOME"]
        assert keras_home == dockerfile_env("KERAS_HOME")
        assert "persistentVolumeClaim" in volumes[mounts[k8s.CACHE_DIR]] and keras_home.startswith(k8s.CACHE_DIR + "/")


def test_the_claims_the_jobs_mount_are_the_ones_volumes_yaml_creates():
    claims = {d["metadata"]["name"]: d["spec"] for d in docs(k8s.example("volumes.yaml"))}
    for file in ("job.yaml", "sweep.yaml"):
        used = {v["persistentVolumeClaim"]["claimName"] for v in pod_of(k8s.example(file))["volumes"]
                if "persistentVolumeClaim" in v}  # fmt: skip
        assert used == set(claims)
    # Many pods write results and share one download at once.
    assert all(spec["accessModes"] == ["ReadWriteMany"] for spec in claims.values())


def test_the_volumes_command_renders_the_claims_with_a_storage_class(tmp_path):
    def volumes(*args):
        return subprocess.run([sys.executable, "-m", "job", "k8s", "volumes", *args], capture_output=True, text=True)

    assert volumes().stdout == k8s.example("volumes.yaml")  # the checked-in file: the default class
    proc = volumes("--storage-class", "nfs-client", "--results-size", "100Gi")
    assert proc.returncode == 0, proc.stderr
    claims = {d["metadata"]["name"]: d["spec"] for d in docs(proc.stdout)}
    assert {name: spec["storageClassName"] for name, spec in claims.items()} == dict.fromkeys(claims, "nfs-client")
    assert claims[k8s.RESULTS_CLAIM]["resources"]["requests"]["storage"] == "100Gi"
    for size, says in (("20", "has no unit, so it is bytes"), ("lots", "is not a Kubernetes quantity")):
        proc = volumes("--cache-size", size)
        assert proc.returncode == 2 and f"cache size '{size}' {says}" in proc.stderr and not proc.stdout
    # "": no class, as Kubernetes reads it, where it meant the default class.
    proc = volumes("--storage-class", "")
    assert [d["spec"]["storageClassName"] for d in docs(proc.stdout)] == ["", ""]
    refused = {
        ("--storage-class", "Bad Class!"): "storage class 'Bad Class!' is no StorageClass name",
        # kubectl applied the second claim over the first: the results got the cache's 2Gi.
        ("--results-claim", "x", "--cache-claim", "x"): "the results claim and the cache claim are both 'x'",
    }
    for args, says in refused.items():
        proc = volumes(*args)
        assert proc.returncode == 2 and says in proc.stderr and not proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "root, expected",
    [("results", "/results"), ("results/sweep-factors", "/results/sweep-factors"), ("runs/a", "/results/runs/a"),
     (".", "/results"), ("/results", "/results"), ("/results/sweep", "/results/sweep")],
)  # fmt: skip
def test_a_results_root_lands_on_the_results_volume(root, expected):
    """Relative roots are placed on it; an absolute one already on it (a spec written for the
    Docker image, whose results volume is /results too) is kept."""
    assert k8s.pod_results_root(Path(root)) == expected


@pytest.mark.parametrize("root", ["/scratch/runs", "../elsewhere", "results/../../x", "/results/../etc", "/resultsx"])
def test_a_results_root_outside_the_volume_is_refused(root):
    with pytest.raises(SpecError, match="outside the results volume"):
        k8s.pod_results_root(Path(root))


@pytest.mark.parametrize(
    "data, refused",
    [("cache_dir: /scratch/me/keras", "data.cache_dir /scratch/me/keras"), ("cache_dir: keras", "data.cache_dir keras"),
     ("path: /data/cifar-10-python.tar.gz", "data.path /data/cifar-10-python.tar.gz"),
     ("path: /cache/../etc/x.tar.gz", "data.path /cache/../etc/x.tar.gz")],
)  # fmt: skip
def test_data_folders_the_pod_does_not_mount_are_refused(tmp_path, data, refused):
    spec = tmp_path / "slurm-spec.yaml"
    spec.write_text(f"data:\n  {data}\nsweep:\n  smoothing.factor: [0.0, 0.1]\n")
    with pytest.raises(SpecError, match="is not on a volume of the pod") as e:
        k8s.render(spec, image="x")
    assert str(e.value).startswith(refused)


def test_data_folders_on_the_claims_are_kept(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("data:\n  path: /cache/keras/datasets/cifar-10-python.tar.gz\n  cache_dir: /results/keras\n")
    assert "/cache/keras/datasets/cifar-10-python.tar.gz" in k8s.render(spec, image="x")


def test_bad_input_is_refused_before_it_reaches_a_cluster(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: '70'\n")
    with pytest.raises(SpecError) as e:
        k8s.render(bad, image="x")
    assert e.value.exit_code == EXIT_BAD_INPUT and "train.epochs" in str(e.value)
    with pytest.raises(SpecError, match="name"):
        k8s.render(SINGLE_SPEC, image="x", name="Bad_Name")
    with pytest.raises(SpecError, match="one run, not a sweep; leave --parallelism out"):
        k8s.render(SINGLE_SPEC, image="x", parallelism=2)
    with pytest.raises(SpecError, match="run at least 1 sweep point at once"):
        k8s.render(SWEEP_SPEC, image="x", parallelism=0)
    with pytest.raises(SpecError, match="image"):
        k8s.render(SINGLE_SPEC, image="has space")


def test_the_render_command_prints_what_render_returns_and_refuses_bad_input_with_exit_2(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "job", "k8s", "render", *args], capture_output=True, text=True)

    options = {
        "parallelism": 3,
        "name": "my-sweep",
        "cpu": "6",
        "memory": "10Gi",
        "grace_seconds": 200,
        "backoff_limit": 0,
    }
    args = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    placement = [
        "--node-selector",
        "pool=a",
        "--node-selector",
        "gpu=h100",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
    ]
    proc = cli(str(SWEEP_SPEC), "--image", k8s.EXAMPLE_IMAGE, *args, *placement)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == k8s.render(
        SWEEP_SPEC,
        image=k8s.EXAMPLE_IMAGE,
        **options,
        node_selector=["pool=a", "gpu=h100"],
        tolerations=["nvidia.com/gpu:NoSchedule"],
    )
    assert job_of(proc.stdout)["spec"]["parallelism"] == 3
    validate(proc.stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: '70'\n")
    for args, message in [
        ([str(bad), "--image", "x"], "train.epochs"),
        ([str(SINGLE_SPEC), "--image", "x", "--name", "Bad_Name"], "name"),
        ([str(SINGLE_SPEC)], "--image"),
        ([str(SINGLE_SPEC), "--image", "x", "--gpus", "2"], "--gpus 2 but runtime.replicas is 1"),
        ([str(SINGLE_SPEC), "--image", "x", "--memory", "lots"], "memory 'lots'"),
        ([str(SINGLE_SPEC), "--image", "x", "--toleration", "gpu:Never"], "effect must be one of"),
        ([str(SINGLE_SPEC), "--image", "x", "--grace-seconds", "0"], "--grace-seconds"),
        ([str(tmp_path / "missing.yaml"), "--image", "x"], "missing.yaml"),
    ]:
        proc = cli(*args)
        assert proc.returncode == EXIT_BAD_INPUT and message in proc.stderr, (args, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_a_results_root_that_yaml_would_misread_reaches_the_pod_whole(tmp_path):
    spec = tmp_path / "odd.yaml"
    spec.write_text("output: {root: 'results/run #1: it''s'}\n")
    (_, job) = yaml.safe_load_all(k8s.render(spec, image="r/l:1"))
    override = container_command(job)[-1]
    assert load_spec(None, [override]).output.root == Path("/results/run #1: it's")
    (_, job) = yaml.safe_load_all(k8s.render(SWEEP_SPEC, image="r/l:1"))
    assert container_command(job)[-1] == "output.root=/results/sweep-factors"  # plain where it can be


def test_default_name_is_a_valid_job_name():
    assert k8s.default_name("specs/seed-loss.yaml") == "lsjob-seed-loss"
    assert k8s.default_name("My_Sweep.v2.yaml") == "lsjob-my-sweep-v2"
    assert len(k8s.default_name("x" * 100 + ".yaml")) <= 63


def test_an_indexed_jobs_pod_names_fit_in_a_label(tmp_path):
    # Kubernetes names an Indexed Job's pods <job name>-<index> and refuses the Job when the
    # last one would pass 63 characters, after the ConfigMap has been created.
    count = len(sweep.points(load_spec(SWEEP_SPEC)))
    long_spec = tmp_path / ("label-smoothing-factor-sweep-over-methods-and-seeds-for-the-paper-v2" + ".yaml")
    long_spec.write_text(SWEEP_SPEC.read_text())
    (_, job) = yaml.safe_load_all(k8s.render(long_spec, image="r/l:1"))
    name = job["metadata"]["name"]
    assert len(f"{name}-{count - 1}") <= 63 and name.startswith("lsjob-label-smoothing")
    single = tmp_path / ("x" * 100 + ".yaml")
    single.write_text("train: {epochs: 1}\n")
    (_, job) = yaml.safe_load_all(k8s.render(single, image="r/l:1"))
    assert len(f"{job['metadata']['name']}-0") == 63  # its one pod is named <name>-0 too
    with pytest.raises(SpecError, match=rf"at most {63 - len(str(count - 1)) - 1} .* up to lsjob-a+-{count - 1}"):
        k8s.render(SWEEP_SPEC, image="r/l:1", name="lsjob-" + "a" * 57)


# ------------------------------------------------------------------ the Dockerfile agrees


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def dockerfile_arg(name: str) -> int:
    return int(re.search(rf"^ARG {name}=(\d+)$", dockerfile(), re.MULTILINE).group(1))


def dockerfile_env(name: str) -> str:
    return re.search(rf"^(?:ENV|    ) *{name}=(\S+?)( \\)?$", dockerfile(), re.MULTILINE).group(1)


def test_dockerfile_matches_what_the_manifests_assume():
    lines = dockerfile().splitlines()
    assert "USER ${UID}:${GID}" in lines  # numeric: runAsNonRoot can check it
    assert 'VOLUME ["/results", "/cache"]' in lines
    assert 'ENTRYPOINT ["lsjob"]' in lines and 'CMD ["--help"]' in lines
    # The README's `run specs/seed-loss.yaml` works in the image and writes to /results.
    assert "COPY specs /specs" in lines and "WORKDIR /" in lines
    assert k8s.pod_results_root(load_spec(SINGLE_SPEC).output.root) == k8s.RESULTS_DIR


# ------------------------------------------------------------------ the command, run here


def lsjob_executable() -> list[str]:
    script = Path(sys.executable).with_name("lsjob")
    return [str(script)] if script.exists() else [sys.executable, "-m", "job"]


def run_manifest_command(text: str, spec_file: Path, results: Path, index: int | None):
    """The Job's container command as the pod runs it, with the pod's paths swapped for local ones."""
    pod = pod_of(text)
    (container,) = pod["containers"]
    local = {f"{k8s.SPEC_DIR}/{k8s.SPEC_FILE}": str(spec_file)}
    argv = [local.get(a, a.replace(f"={k8s.RESULTS_DIR}", f"={results}")) for a in container["args"]]
    assert container["command"] == ["lsjob"]
    env = {k: v for k, v in os.environ.items() if k not in sweep.INDEX_ENV}
    env.update({e["name"]: e["value"].replace(k8s.CACHE_DIR, str(results.parent / "cache")) for e in container["env"]})
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)  # what Kubernetes sets in an Indexed Job's pod
    tiny = ["data.source=synthetic", "data.train_size=128", "data.test_size=32", "train.batch_size=16",
            "train.epochs=1"]  # fmt: skip
    argv += [a for s in tiny for a in ("--set", s)]
    return subprocess.run(
        [*lsjob_executable(), *argv], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
# The sweep only: a single run's command is the same, its pod's index 0 ignored for a plain spec
# (test_sweep), and each case trains.
@pytest.mark.parametrize("file, spec_file", [("sweep.yaml", SWEEP_SPEC)])
def test_the_manifest_command_trains_the_right_run(tmp_path, file, spec_file):
    text = k8s.example(file)
    all_points = sweep.points(load_spec(spec_file))
    index = len(all_points) - 1
    results = tmp_path / "results"
    proc = run_manifest_command(text, spec_file, results, index)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Exactly the run the index names, under the spec's root mapped onto the volume.
    expected = all_points[index]
    root = results / Path(k8s.pod_results_root(load_spec(spec_file).output.root)).relative_to(k8s.RESULTS_DIR)
    assert sorted(p.name for p in root.iterdir()) == [expected.run_name]
    manifest = json.loads((root / expected.run_name / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert expected.run_name != all_points[0].run_name  # the index, not a default, chose it
    assert manifest["sweep"]["index"] == index


def test_the_stricter_limits_start_above_ten_to_the_fifth_points_not_at_it():
    # The API server's 10^4-pods-at-once and maxFailedIndexes rules are for more than 10^5
    # completions: a sweep of exactly 10^5 may run them all at once, and 10^4 failed points do
    # not fail the whole Job. (The helpers: rendering a 10^5-point spec takes some 10 s.)
    at = k8s._completions(100_000, None, 3)
    assert at["parallelism"] == 100_000 and "maxFailedIndexes" not in at
    k8s._check_parallelism(100_000, 100_000, Path("sweep.yaml"))  # not refused
    above = k8s._completions(100_001, None, 3)
    assert (above["parallelism"], above["maxFailedIndexes"]) == (10_000, 10_000)
    with pytest.raises(SpecError, match="at most 10000 pods"):
        k8s._check_parallelism(10_001, 100_001, Path("sweep.yaml"))


def test_memory_with_a_capital_e_exponent_is_bytes_as_kubernetes_reads_it(tmp_path):
    # To the API server 16E9 is 16 * 10^9 bytes (E followed by digits is an exponent, not exa).
    resources = resources_for(tmp_path, "  replicas: 1", memory="16E9")
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "16E9"
    assert k8s._memory_bytes("16E9") == k8s._memory_bytes("16e9") == 16e9
