"""The run spec: a YAML file validated by these models.

The defaults ARE the tutorial's recipe (MiniGoogLeNet, CIFAR-10, SGD lr 5e-3
momentum 0.9 decayed linearly to 0 over 70 epochs, batch 64, 10% shifts and
horizontal flips, label smoothing 0.1), so an empty spec reproduces it. The field
descriptions here are what `lsjob schema` publishes to editors.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from job.errors import SpecError
from job.spec_yaml import SpecDumper, check_nesting, load_yaml, read_yaml


def _usable_path(path: Path) -> Path:
    # Refused here, not as a traceback when the run first opens it (after a download).
    if "\x00" in str(path):
        raise ValueError("contains a NUL character, which no path can hold")
    try:
        path.expanduser()
    except RuntimeError:  # ~name of no user, or ~ with neither $HOME nor a passwd entry
        raise ValueError(f"{str(path).split('/')[0]} names no home directory here; give the full path") from None
    return path


# Path("") is ".": a quoted unset variable ("$SCRATCH") would quietly mean the working directory.
EMPTY_PATH = "is empty (an unset variable?): give a path, or . for the current folder"


def _not_empty(value):
    if value == "":
        raise ValueError(EMPTY_PATH)
    return value


# Lax only where YAML cannot express the type: paths arrive as strings.
PathField = Annotated[Path, Field(strict=False), BeforeValidator(_not_empty), AfterValidator(_usable_path)]
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_NAME_FIELDS = ("smoothing.method", "smoothing.factor", "train.seed")  # what Spec.run_name names a run by
# Not part of a run's identity (Spec.content_hash): fields that cannot change its results.
IDENTITY_EXCLUDES = {
    "output": True, "sweep": True, "runtime": {"compile_cache"}, "data": {"cache_dir"}, "train": {"eval_batch_size"},
}  # fmt: skip
TRAIN_IMAGES = 50_000  # CIFAR-10's training set, and the synthetic set's size unless data.train_size says
TEST_IMAGES = 10_000
# The sizes that take every image: a run's identity counts them as unset (Spec.identity).
WHOLE_SET = {"data.train_size": TRAIN_IMAGES, "data.test_size": TEST_IMAGES}
# The synthetic set is made in memory, 3 KB an image: a mistyped size would take gigabytes first.
SYNTHETIC_MAX_IMAGES = 1_000_000
MAX_REPLICAS = 4096  # far beyond any one machine: a larger count is a typo


class Section(BaseModel):
    # Strict: a quoted "70" or a typo'd key is an error, never silently coerced or ignored.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class DataSpec(Section):
    source: Literal["cifar10", "synthetic"] = Field(
        "cifar10",
        description=(
            "`cifar10`: the real dataset; `synthetic`: a learnable CIFAR-shaped stand-in, generated offline,"
            " the same images for every run."
        ),
    )
    path: PathField | None = Field(
        None,
        description=(
            "A local CIFAR-10 copy: the official `cifar-10-python.tar.gz` (checksum verified) or an "
            "extracted `cifar-10-batches-py/` folder; not with `synthetic`. Unset: the cache, else a "
            "download."
        ),
    )
    cache_dir: PathField | None = Field(
        None,
        description=(
            "Where the download and its extraction live (a `datasets/` folder inside). Unset: `$KERAS_HOME`,"
            " else `~/.keras` (`/tmp/.keras` where home is read-only)."
        ),
    )
    train_size: int | None = Field(
        None, gt=0, description="Use the first N training images (unset: all; synthetic: 50,000, at most 1,000,000)."
    )
    test_size: int | None = Field(
        None, gt=0, description="Use the first N test images (unset: all; synthetic: 10,000, at most 1,000,000)."
    )

    @field_validator("train_size", "test_size")
    @classmethod
    def _size_exists(cls, size, info):
        # Known from the spec, so `lsjob validate` says so, before a download or a large allocation.
        if size is None or "source" not in info.data:
            return size
        if info.data["source"] == "cifar10":
            limit = TRAIN_IMAGES if info.field_name == "train_size" else TEST_IMAGES
            if size > limit:
                raise ValueError(f"CIFAR-10 has only {limit:,} images there")
        elif size > SYNTHETIC_MAX_IMAGES:
            raise ValueError(f"the synthetic set is made in memory, {SYNTHETIC_MAX_IMAGES:,} images at most")
        return size

    @model_validator(mode="after")
    def _path_needs_cifar10(self):
        if self.source == "synthetic" and self.path is not None:
            raise ValueError("data.path names a CIFAR-10 copy; it is not used with source 'synthetic'")
        return self


class SmoothingSpec(Section):
    method: Literal["labels", "loss", "none"] = Field(
        "labels",
        description=(
            "`labels`: smooth the one-hot training labels, `y*(1-f) + f/K`, and train with plain "
            "cross-entropy; `loss`: hard labels and `CategoricalCrossentropy(label_smoothing=f)`; `none`: no"
            " smoothing. Validation labels are never smoothed."
        ),
    )
    factor: float = Field(0.1, ge=0.0, lt=1.0, description="Smoothing factor f in [0, 1). Ignored by method `none`.")

    @property
    def effective_factor(self) -> float:
        return 0.0 if self.method == "none" else self.factor


class TrainSpec(Section):
    epochs: int = Field(
        70, gt=0, le=100_000, description="Epochs; the learning rate decays toward 0, reached after the last."
    )
    batch_size: int = Field(
        64, gt=0, le=65_536,
        description="Training batch size: the global batch, split evenly across `runtime.replicas`.",
    )  # fmt: skip
    lr: float = Field(5e-3, gt=0.0, le=10.0, description="Initial SGD learning rate, for `lr_reference_batch`.")
    lr_scaling: Literal["none", "linear"] = Field(
        "none",
        description=(
            "`none`: `lr` as given, whatever the batch; `linear`: `lr * batch_size / lr_reference_batch` "
            "(the linear scaling rule, for a bigger global batch on more GPUs)."
        ),
    )
    lr_reference_batch: int = Field(64, gt=0, le=65_536, description="The batch size `lr` is meant for.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    lr_power: float = Field(
        1.0,
        gt=0.0,
        le=10.0,
        description="Per-epoch polynomial decay: `lr * (1 - epoch / epochs) ** lr_power`; 1 is linear.",
    )
    seed: int = Field(42, ge=0, lt=2**31, description="Seeds weight init, shuffle order, augmentation and dropout.")
    eval_batch_size: int = Field(
        256, gt=0, le=65_536, description="Batch size for validation and prediction (does not change results)."
    )

    @property
    def base_lr(self) -> float:
        """The learning rate at epoch 0, after lr_scaling."""
        scale = self.batch_size / self.lr_reference_batch if self.lr_scaling == "linear" else 1.0
        return self.lr * scale


# The augmentation layer's fill modes (job.augment), as ImageDataGenerator names them.
FillMode = Literal["nearest", "reflect", "wrap", "constant"]


class AugmentSpec(Section):
    shift: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description=(
            "Random shift of up to this fraction of width and height, bilinear; below 1 "
            "(ImageDataGenerator's `width_shift_range` reads 1 or more as pixels)."
        ),
    )
    horizontal_flip: bool = Field(True, description="Random horizontal flips, each image with probability 1/2.")
    fill_mode: FillMode = Field(
        "nearest",
        description=(
            "How pixels shifted in are filled: `nearest`, `reflect`, `wrap` or `constant` (`wrap` and "
            "`constant` as scipy's `grid-wrap` and `grid-constant`; ImageDataGenerator's `constant` differs "
            "in a one-pixel border at fractional shifts, its `wrap` in the whole strip wrapped in, as its "
            "scipy mode repeats the image every n - 1 pixels)."
        ),
    )


class EvalSpec(Section):
    temperature_scaling: bool = Field(
        False,
        description=(
            "Fit one softmax temperature on held-out training images, which are not trained on, and report "
            "calibration (ECE, NLL) before and after."
        ),
    )
    holdout_size: int = Field(
        5000, gt=0, description="With `temperature_scaling`: the last N training images, held out from training."
    )


class OutputSpec(Section):
    root: PathField = Field(
        Path("results"),
        description=(
            "Results root; one directory per run inside (a leading `~` is your home); not inside a run's directory."
        ),
    )
    run: str | None = Field(
        None,
        description=(
            "Run directory name, 1 to 128 letters, digits, `.`, `_` or `-`, starting with a letter or digit."
            " Unset: `<method>-f<factor>-s<seed>`, e.g. `labels-f0.1-s42` (`none-s<seed>` for `none`)."
        ),
    )
    checkpoint_steps: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description=(
            "Also checkpoint every N training steps inside an epoch (0: at epoch ends only; with "
            "`runtime.steps_per_execution` > 1, at the first call boundary at or past every N), for long "
            "epochs on preemptible nodes; a resume from one continues exactly, and a stop on SIGTERM "
            "checkpoints its step either way. Not part of the run's identity: changing it keeps the run."
        ),
    )

    @field_validator("run")
    @classmethod
    def _safe_run_name(cls, run):
        # The name becomes a path component: nothing that could climb out of the root.
        if run is not None and not RUN_NAME.fullmatch(run):
            raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return run

    @field_validator("root")
    @classmethod
    def _expand_home(cls, root: Path) -> Path:
        # As the data and cache paths are: unexpanded, `~/results` made a folder named ~.
        return root.expanduser()


class RuntimeSpec(Section):
    mixed_precision: Literal["off", "bf16", "fp16", "auto"] = Field(
        "off",
        description=(
            "`off`, `bf16`, `fp16` (with loss scaling) or `auto`: bf16 on NVIDIA GPUs of compute capability "
            "8.0 and up and on TPUs, fp16 on older NVIDIA GPUs (7.x), off on CPUs. Softmax and loss stay "
            "float32."
        ),
    )
    jit_compile: Literal["auto"] | bool = Field(
        "auto", description="XLA/JIT compilation of the training step: `auto`, `true` or `false`."
    )
    deterministic: bool = Field(
        False,
        description=(
            "Deterministic ops: two runs, or a resumed run, give identical histories on CPU (JAX on a GPU "
            "also needs `XLA_FLAGS=--xla_gpu_deterministic_ops=true` set before lsjob starts; a warning says"
            " so)."
        ),
    )
    steps_per_execution: int = Field(
        1, gt=0, le=10_000, description="Training steps per compiled call (TensorFlow and JAX; PyTorch takes only 1)."
    )
    compile_cache: str = Field(
        "auto",
        min_length=1,
        description=(
            "JAX backend: a folder for compiled programs kept between processes, so that a sweep's other "
            "tasks, a requeued run and a re-run skip compilation (relative: from the working directory); "
            "`off`; or `auto`: `$JAX_COMPILATION_CACHE_DIR`, else `compile-cache/` in `$KERAS_HOME` or "
            "`~/.keras`. Whoever can write there can run code in your runs: keep it yours. Not part of the "
            "run's identity; other backends do not use it."
        ),
    )
    replicas: int | Literal["all"] = Field(
        1,
        description=(
            "Data-parallel replicas in one run, one per GPU (CPU devices where there is none): a number, or "
            "`all`. TensorFlow: `tf.distribute.MirroredStrategy`; JAX: `keras.distribution.DataParallel`. "
            "`train.batch_size` is the global batch and must split evenly."
        ),
    )

    @field_validator("jit_compile", mode="before")
    @classmethod
    def _auto_or_bool(cls, value):
        # One message, not one per side of the union under its internal names (literal['auto'], bool).
        if not (value is True or value is False or value == "auto"):
            raise ValueError(f"must be true, false or auto (got {_short(value)})")
        return value

    @field_validator("replicas", mode="before")
    @classmethod
    def _count_or_all(cls, value):
        if not (value == "all" or (isinstance(value, int) and not isinstance(value, bool))):
            raise ValueError(f"must be a number of devices from 1 to {MAX_REPLICAS}, or all (got {_short(value)})")
        return value

    @field_validator("compile_cache", mode="before")
    @classmethod
    def _not_a_boolean(cls, value):
        # As jit_compile takes false: "must be text" alone left `false` looking like the way to write off.
        if value is True or value is False:
            meant = "auto for the default folder" if value else "off to compile afresh every time"
            raise ValueError(f"must be auto, off or a folder (got {str(value).lower()}): write {meant}")
        return value

    @field_validator("compile_cache")
    @classmethod
    def _cache_keyword_or_folder(cls, cache):
        if cache not in ("auto", "off"):
            _usable_path(Path(cache))
        # "Off" or "AUTO" would otherwise quietly become a folder of that name.
        if cache.lower() in ("auto", "off") and cache not in ("auto", "off"):
            raise ValueError(f"write {cache.lower()} in lower case (or ./{cache} for a folder of that name)")
        return cache

    @field_validator("replicas")
    @classmethod
    def _positive_replicas(cls, replicas):
        if replicas != "all" and not 1 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"must be a number of devices from 1 to {MAX_REPLICAS}, or all")
        return replicas


# One grid: dotted field path -> the values it takes. Expanded by job.sweep.
Grid = Annotated[
    dict[str, Annotated[list[Any], Field(min_length=1)]],
    Field(min_length=1, description="Dotted field path -> list of values, e.g. smoothing.factor: [0.05, 0.1]."),
]
# What a sweep may not vary: where results go is per sweep, not per point.
UNSWEPT_SECTIONS = ("output", "sweep")


class Spec(Section):
    data: DataSpec = Field(default_factory=DataSpec)
    smoothing: SmoothingSpec = Field(default_factory=SmoothingSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    sweep: Grid | Annotated[list[Grid], Field(min_length=1)] | None = Field(
        None,
        description=(
            "A grid of runs over spec fields by dotted path (`smoothing.factor: [0.05, 0.1]`), or a list of "
            "grids run one after another. Points are numbered grid by grid, keys in the order written, the "
            "last key varying fastest; each point is an ordinary run in its own directory under "
            "`output.root`."
        ),
    )

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_shape(cls, sweep):
        # Checked before pydantic tries each side of the union, whose errors name its
        # internal types (sweep.dict[str,list[any]]...) and report every problem twice.
        if sweep is None:
            return sweep
        example = "e.g. {smoothing.factor: [0.05, 0.1]}"
        if isinstance(sweep, list):
            if not sweep:
                raise ValueError(f"an empty list of grids; give at least one grid, {example}")
            grids = [(f"grid {i}", grid) for i, grid in enumerate(sweep)]
        elif isinstance(sweep, dict):
            grids = [("the grid", sweep)]
        else:
            raise ValueError(f"must map dotted field paths to lists of values, {example}, or list such grids")
        problems = []
        for name, grid in grids:
            if not isinstance(grid, dict):
                problems.append(f"{name} is {_short(grid)}, not a mapping of field paths to lists of values")
            elif not grid:
                problems.append(f"{name} is empty; give at least one field, {example}")
            for path, values in grid.items() if isinstance(grid, dict) else ():
                if not isinstance(path, str):
                    problems.append(f"{_short(path)}: a key is a dotted field path, such as smoothing.factor")
                elif not isinstance(values, list):
                    problems.append(f"{path}: give a list of values, e.g. [{_short(values)}]")
                elif not values:
                    problems.append(f"{path}: the list of values is empty")
        if problems:
            raise ValueError("; ".join(problems))
        return sweep

    @field_validator("sweep")
    @classmethod
    def _sweep_names_fields(cls, sweep):
        for grid in [sweep] if isinstance(sweep, dict) else sweep or []:
            for path in grid:
                problem = sweepable(path)
                if problem:
                    raise ValueError(f"{path!r}: {problem}")
        return sweep

    @model_validator(mode="after")
    def _sweep_names_its_runs(self):
        if self.sweep is not None and self.output.run is not None:
            raise ValueError(
                "output.run cannot be set in a sweep: each point's directory is named from its values; "
                "set output.root to keep the sweep's runs together"
            )
        return self

    def _swept(self, *fields: str) -> bool:
        """Whether the sweep sets any of these fields. A check across them is then every point's
        (sweep.points validates each, without the sweep), not the base spec's: its values there,
        often defaults, are ones no point uses (a swept eval.holdout_size was refused for the
        default 5000 against a data.train_size of 256)."""
        return any(key in fields for grid in self.grids for key in grid)

    @model_validator(mode="after")
    def _batch_splits_across_replicas(self):
        if self._swept("train.batch_size", "runtime.replicas"):
            return self
        replicas = self.runtime.replicas
        if replicas != "all" and self.train.batch_size % replicas:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} does not split evenly across runtime.replicas "
                f"{replicas}: make the global batch a multiple of {replicas}"
            )
        return self

    @model_validator(mode="after")
    def _training_set_fits(self):
        # Known from the spec alone, so `lsjob validate` says so and `run` writes nothing.
        if self._swept("data.train_size", "eval.temperature_scaling", "eval.holdout_size", "train.batch_size"):
            return self
        images = self.data.train_size or TRAIN_IMAGES
        sized = f"data.train_size {self.data.train_size}" if self.data.train_size else f"all {TRAIN_IMAGES:,}"
        if self.eval.temperature_scaling:
            if self.eval.holdout_size >= images:
                raise ValueError(
                    f"eval.holdout_size {self.eval.holdout_size} leaves no training images out of {sized}: "
                    "lower eval.holdout_size or raise data.train_size"
                )
            images -= self.eval.holdout_size
            sized += f" less eval.holdout_size {self.eval.holdout_size}"
        if images < self.train.batch_size:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is more than the {images:,} training images "
                f"({sized}): lower train.batch_size or raise data.train_size"
            )
        return self

    @property
    def grids(self) -> list[dict[str, list]]:
        if self.sweep is None:
            return []
        return [self.sweep] if isinstance(self.sweep, dict) else list(self.sweep)

    @property
    def run_name(self) -> str:
        """output.run, else named from RUN_NAME_FIELDS: labels-f0.1-s42; none-s42, its factor counting for nothing."""
        if self.output.run:
            return self.output.run
        if self.smoothing.method == "none":
            return f"none-s{self.train.seed}"
        return f"{self.smoothing.method}-f{self.smoothing.factor:g}-s{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return self.output.root / self.run_name

    def to_yaml(self) -> str:
        exclude = {"sweep"} if self.sweep is None else None
        return yaml.dump(self.model_dump(mode="json", exclude=exclude), Dumper=SpecDumper, sort_keys=False)

    def content_hash(self) -> str:
        """Identity of the experiment: whatever can change its results. Left out: where its
        results, its downloaded data and compiled programs are kept, the evaluation batch
        size (a requeued task on a smaller GPU may lower it and still resume), and for a
        sweep point the sweep it came from (growing a sweep keeps its finished runs)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def unused_fields(self) -> list[str]:
        """The fields this spec's own settings ignore, as dotted paths."""
        ignored = {
            "smoothing.factor": self.smoothing.method == "none",
            "eval.holdout_size": not self.eval.temperature_scaling,
            "train.lr_reference_batch": self.train.lr_scaling == "none",
        }
        return [path for path, unused in ignored.items() if unused]

    def identity(self) -> dict:
        """The fields content_hash covers. A field the spec's own settings ignore counts at its
        default, whatever it says (factor under method none, holdout_size without temperature
        scaling, lr_reference_batch without lr_scaling), so changing it never blocks a resume;
        at its default, not left out, so every other run keeps the hash it had. So does a size
        of the whole set (data.train_size 50000, test_size 10000): the same images as unset."""
        payload = self.model_dump(mode="json", exclude=IDENTITY_EXCLUDES)
        for path in self.unused_fields():
            section, name = path.split(".")
            payload[section][name] = type(getattr(self, section)).model_fields[name].default
        for key, whole in WHOLE_SET.items():
            section, name = key.split(".")
            if payload[section][name] == whole:  # the first N of N, for CIFAR-10 and the synthetic set
                payload[section][name] = None
        return payload


SECTIONS = tuple(name for name in Spec.model_fields if name != "sweep")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A spec's nested sections as dotted field paths: {"train": {"lr": 0.005}} -> {"train.lr": 0.005}."""
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def sizes_shown(flat: dict[str, Any]) -> dict[str, Any]:
    """Flattened fields with an unset data size as the whole set's, as a reader knows it: 50000, not null."""
    return {**flat, **{key: whole for key, whole in WHOLE_SET.items() if key in flat and flat[key] is None}}


def identity_differences(old: Spec, new: Spec) -> list[str]:
    """Where `new` differs from `old` in what makes a run's identity: 'field: old -> new'; a field
    one side's settings ignore reads "unused" there, not the default its identity counts it at
    (eval.holdout_size: unused -> 128, where temperature scaling was off)."""
    a, b = (sizes_shown(flatten(spec.identity())) for spec in (old, new))
    shown_a, shown_b = (
        {**{key: json.dumps(value) for key, value in values.items()}, **dict.fromkeys(spec.unused_fields(), "unused")}
        for values, spec in ((a, old), (b, new))
    )
    return [f"{key}: {shown_a.get(key, 'null')} -> {shown_b.get(key, 'null')}"
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]  # fmt: skip


def sweepable(path: str) -> str | None:
    """Why a dotted path cannot be swept, or None when it can."""
    section, _, name = path.partition(".")
    sections = {k: f.annotation for k, f in Spec.model_fields.items() if k not in UNSWEPT_SECTIONS}
    if section in UNSWEPT_SECTIONS:
        return f"{section} is the same for every point of a sweep and cannot be swept"
    if section not in sections:
        return (
            f"not a spec field; sweep keys are dotted paths such as smoothing.factor (sections: {', '.join(sections)})"
        )
    fields = sections[section].model_fields
    if name not in fields:
        return f"not a spec field; {section} has {', '.join(f'{section}.{f}' for f in fields)}"
    return None


def json_schema() -> dict:
    return Spec.model_json_schema()


def load_spec(path: str | Path | None, overrides: list[str] = ()) -> Spec:
    """Read, override and validate a spec; every problem is a SpecError naming the field."""
    doc = read_yaml(Path(path)) if path is not None else {}
    # `train:` with nothing under it (YAML's null): an empty section, i.e. its defaults.
    doc = {key: {} if value is None and key in SECTIONS else value for key, value in doc.items()}
    set_fields = {item: _apply_override(doc, item) for item in overrides}
    check_nesting(doc, str(path) if path else "spec")
    try:
        spec = Spec.model_validate(doc)
    except ValidationError as e:
        source = str(path) if path else "spec"
        raise SpecError(describe_errors(e, source, [f for fields in set_fields.values() for f in fields])) from None
    _check_overrides_against_sweep(spec, set_fields)
    return spec


def _check_overrides_against_sweep(spec: Spec, set_fields: dict[str, list[str]]) -> None:
    # The sweep would silently win over such an override; say so instead.
    swept = {key for grid in spec.grids for key in grid}
    for item, fields in set_fields.items():
        # A mapping too: --set 'smoothing={factor: 0.5}' where smoothing.factor is swept (but not
        # --set 'train={epochs: 2}' where train.seed is: the mapping merges, and leaves the seed be).
        covered = sorted(k for k in swept if any(k == f or k.startswith(f + ".") for f in fields))
        if covered:
            swept_here = f"{covered[0]} is" if len(covered) == 1 else f"{', '.join(covered)} are"
            raise SpecError(f"--set {item!r}: {swept_here} swept by this spec, so --set cannot fix it")


def _apply_override(doc: dict, item: str) -> list[str]:
    """Apply `a.b.c=value`; the value is a YAML scalar, so 2 is an int and true a bool. Returns the
    dotted fields it set: its key, or for a mapping (which merges) each field in it."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise SpecError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=2")
    if parts[0] == "sweep":  # its keys are dotted paths themselves; --set cannot address them
        raise SpecError(f"--set {item!r}: the sweep cannot be changed with --set; edit the spec file")
    try:
        value = load_yaml(raw)
        _refuse_comment(item, raw)
    except yaml.YAMLError as e:
        raise SpecError(f"--set {item!r}: value is not valid YAML: {e}") from None
    except RecursionError:
        raise SpecError(f"--set {key.strip()}=...: the value nests thousands deep") from None
    node = doc
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    # A mapping merges into the section it names, as dotted keys would: `train={epochs: 3}` keeps
    # the file's other train fields rather than quietly resetting them to the defaults.
    old = node.get(parts[-1])
    node[parts[-1]] = _merged(old, value)
    key = ".".join(parts)
    # An empty mapping merged into a section (or naming one the file leaves out) sets no field;
    # on a plain field, it sets that field (to a mapping, which validation then refuses).
    if isinstance(value, dict) and (value or isinstance(old, dict) or (old is None and key in SECTIONS)):
        return [f"{key}.{field}" for field in flatten(value)]
    return [key]


def _merged(old: Any, new: Any) -> Any:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    return {**old, **{key: _merged(old.get(key), value) for key, value in new.items()}}


def yaml_string(text: str) -> str:
    """`text` as a --set value that reads back as exactly this string: plain where YAML
    would read it so, else single-quoted (a path with ' #' or ': ' in it, say)."""
    try:
        plain = load_yaml(text) == text and "#" not in text
    except yaml.YAMLError:
        plain = False
    return text if plain else "'" + text.replace("'", "''") + "'"


def _refuse_comment(item: str, raw: str) -> None:
    """YAML drops ` #...` as a comment: `output.root=/scratch/exp #2` would mean /scratch/exp."""
    tokens = [t for t in yaml.scan(raw) if not isinstance(t, (yaml.StreamStartToken, yaml.StreamEndToken))]
    rest = raw[max((t.end_mark.index for t in tokens), default=0) :].strip()
    if rest.startswith("#"):
        key = item.partition("=")[0].strip()
        before = raw.rstrip()[: -len(rest)].strip()
        # A note after a number (`train.epochs=2 #was 70`) is meant to go; a path's `#2` to stay,
        # unless the value before it is quoted already (`'/x y' #old`): then it is a note.
        ways = [f"a note: leave it out (--set {_shell_word(f'{key}={before}')})"] if before else []
        if before[:1] not in ("'", '"'):
            quoted = _shell_word(f"{key}={yaml_string(raw.strip())}")
            ways.append(f"part of a text value (a path, a name): quote the value: --set {quoted}")
        advice = "; ".join(ways)
        advice = advice[:1].upper() + advice[1:]
        raise SpecError(f"--set {item!r}: YAML reads {rest!r} as a comment and drops it. {advice}")


def _shell_word(text: str) -> str:
    """`text` as one word to paste into a shell: in double quotes where that keeps it as it is."""
    return f'"{text}"' if not any(c in text for c in '"$`\\!') else shlex.quote(text)


def describe_errors(error: ValidationError, source: str, set_fields: list[str] = ()) -> str:
    problems = problem_lines(error, set_fields)
    return "\n".join([f"{source}: {len(problems)} problem(s)", *(f"  {line}" for line in problems)])


# pydantic's wording where it names its own types: a section given as a scalar, a path or a
# string given as a number (YAML read it so: quoting keeps it text).
_PLAIN_MESSAGES = {
    "model_type": "is a section: give its fields as a mapping (`lsjob show` prints them all)",
    "path_type": "must be a path; quote it if YAML reads it as a number, a boolean or null (~)",
    "string_type": "must be text; quote it if YAML reads it as a number, a boolean or null (~)",
}


def problem_lines(error: ValidationError, set_fields: list[str] = ()) -> list[str]:
    """One line per problem, `field.path: message (got value)`, saying `from --set` where an
    override set the field, so no one looks for it in the spec file."""
    lines = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        message = _PLAIN_MESSAGES.get(e["type"], e["msg"].removeprefix("Value error, "))
        # A check across fields (the spec's or a section's) names the field it is about first:
        # headed by it, as any other problem, not by "(top level)" or the section.
        first, _, rest = message.partition(" ")
        if rest and _is_field_path(first) and (where == "(top level)" or first.startswith(where + ".")):
            where, message = first, rest
        if e["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; `lsjob schema` lists every field)"
            if _is_field_path(where) and len(e["loc"]) == 1:
                # `train.epochs: 2` copied from a --set into the file: spelled right, but a file nests.
                section, _, name = where.partition(".")
                message = f"a dotted path works in --set and sweep; in a file, nest it: `{section}:` then `  {name}:`"
        # A whole section as "input" says nothing useful; a scalar does; a message with its own (got ...) has it.
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e.get("input"), dict) or "(got " in message
        got = "" if quiet else f" (got {_short(e.get('input'))})"
        # An unknown key is reported where it starts (`trian` for `--set trian.epochs=2`), and a
        # field given a mapping where it is (`train.epochs` for `--set 'train.epochs={a: 1}'`).
        above = e["type"] == "extra_forbidden" or _is_field_path(where)
        from_set = any(
            where == k or where.startswith(k + ".") or (above and k.startswith(where + ".")) for k in set_fields
        )
        origin = " (from --set)" if from_set else ""
        lines.append(f"{where}: {message}{got}{origin}")
    return lines


def _is_field_path(path: str) -> bool:
    section, _, name = path.partition(".")
    return section in SECTIONS and name in Spec.model_fields[section].annotation.model_fields


# Bounded however large the value: an alias bomb expands to millions of items when printed whole.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 4, 4, 60, 60


def _short(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
