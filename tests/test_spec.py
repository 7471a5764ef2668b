"""The spec: recipe defaults, overrides, and clear refusals of bad input."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from pydantic import BaseModel

from job import cli, sweep
from job import spec as spec_module
from job.errors import EXIT_BAD_INPUT, SpecError
from job.spec import (
    RUN_NAME,
    SmoothingSpec,
    Spec,
    TrainSpec,
    identity_differences,
    json_schema,
    load_spec,
    yaml_string,
)


def write(tmp_path, text, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_tutorial_recipe():
    spec = load_spec(None)
    assert (spec.train.epochs, spec.train.batch_size, spec.train.lr, spec.train.momentum) == (70, 64, 5e-3, 0.9)
    assert spec.train.lr_power == 1.0
    assert (spec.augment.shift, spec.augment.horizontal_flip, spec.augment.fill_mode) == (0.1, True, "nearest")
    assert spec.smoothing.factor == 0.1
    assert spec.data.source == "cifar10"


def test_shipped_specs_are_valid_and_say_what_they_claim():
    labels, loss = load_spec(ROOT / "specs/seed-labels.yaml"), load_spec(ROOT / "specs/seed-loss.yaml")
    assert (labels.smoothing.method, labels.smoothing.factor) == ("labels", 0.1)
    assert (loss.smoothing.method, loss.smoothing.factor) == ("loss", 0.1)
    assert labels.run_name != loss.run_name
    smoke = load_spec(ROOT / "specs/smoke.yaml")
    assert smoke.data.source == "synthetic"


def test_overrides_are_typed_by_the_schema(tmp_path):
    spec = load_spec(
        write(tmp_path, "train: {epochs: 5}\n"),
        ["train.epochs=2", "smoothing.method=loss", "runtime.jit_compile=false", "train.lr=1e-3"],
    )
    assert spec.train.epochs == 2 and spec.smoothing.method == "loss"
    assert spec.runtime.jit_compile is False and spec.train.lr == 1e-3


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    assert load_spec(write(tmp_path, "train: {lr: 5e-3}\n")).train.lr == 5e-3


def test_off_is_the_word_off_and_only_true_and_false_are_booleans(tmp_path):
    # YAML 1.1 would read `off` as False, which mixed_precision refuses ("should be 'off'").
    spec = load_spec(write(tmp_path, "runtime: {mixed_precision: off, deterministic: true}\n"))
    assert spec.runtime.mixed_precision == "off" and spec.runtime.deterministic is True
    assert load_spec(None, ["runtime.mixed_precision=off", "runtime.jit_compile=False"]).runtime.jit_compile is False
    with pytest.raises(SpecError, match=r"runtime.deterministic: Input should be a valid boolean \(got 'yes'\)"):
        load_spec(write(tmp_path, "runtime: {deterministic: yes}\n"))


def test_derived_run_names_show_method_factor_seed():
    assert load_spec(None, ["smoothing.method=loss", "smoothing.factor=0.2", "train.seed=3"]).run_name == "loss-f0.2-s3"
    assert load_spec(None, ["smoothing.method=none"]).run_name == "none-s42"


def test_method_none_ignores_the_factor():
    assert load_spec(None, ["smoothing.method=none"]).smoothing.effective_factor == 0.0


def test_hash_ignores_what_cannot_change_results_but_not_the_experiment():
    base = load_spec(None)
    for neutral in (["output.root=/elsewhere", "output.run=x"], ["data.cache_dir=/c"], ["train.eval_batch_size=64"]):
        assert load_spec(None, neutral).content_hash() == base.content_hash(), neutral
    for change in (["train.epochs=2"], ["data.path=/c/cifar-10-python.tar.gz"], ["runtime.mixed_precision=bf16"]):
        assert load_spec(None, change).content_hash() != base.content_hash(), change


def test_a_field_the_spec_ignores_is_no_part_of_the_identity_and_defaults_keep_their_hash():
    base = load_spec(None)
    for ignored in (["smoothing.method=none", "smoothing.factor=0"], ["eval.holdout_size=100"],
                    ["train.lr_reference_batch=128"]):  # fmt: skip
        assert load_spec(None, ignored).content_hash() == load_spec(None, ignored[:1]).content_hash(), ignored
        assert identity_differences(load_spec(None, ignored[:1]), load_spec(None, ignored)) == []
    used = ["eval.temperature_scaling=true", "eval.holdout_size=100"]
    assert load_spec(None, used).content_hash() != load_spec(None, used[:1]).content_hash()
    # A size of the whole set is the run that leaves it unset: it may resume it, and groups with it.
    for source in ("cifar10", "synthetic"):
        unset = load_spec(None, [f"data.source={source}"])
        whole = load_spec(None, [f"data.source={source}", "data.train_size=50000", "data.test_size=10000"])
        assert whole.content_hash() == unset.content_hash() and identity_differences(unset, whole) == []
        # Named as a reader knows the whole set, where the run's spec.yaml may say either.
        less = load_spec(None, [f"data.source={source}", "data.train_size=40000"])
        assert identity_differences(whole, less) == ["data.train_size: 50000 -> 40000"]
        assert (
            load_spec(None, [f"data.source={source}", "data.train_size=49999"]).content_hash() != unset.content_hash()
        )
    assert base.content_hash() == "b4681dc38e475edf"  # the recipe's hash, as every earlier lsjob wrote it


def test_the_holdout_size_counts_toward_the_identity_only_with_temperature_scaling():
    # Without temperature scaling no image is held out: changing holdout_size must not block a resume.
    unused = [load_spec(None, ["eval.temperature_scaling=false", f"eval.holdout_size={n}"]) for n in (5000, 100)]
    assert unused[0].content_hash() == unused[1].content_hash()
    used = [load_spec(None, ["eval.temperature_scaling=true", f"eval.holdout_size={n}"]) for n in (5000, 100)]
    assert used[0].content_hash() != used[1].content_hash()  # it changes what the model trains on


def test_a_batch_as_large_as_the_training_set_is_allowed_and_one_image_more_is_refused():
    # An epoch of zero full batches would train on nothing; refused before a run writes anything.
    assert load_spec(None, ["data.train_size=16", "train.batch_size=16"]).train.batch_size == 16
    with pytest.raises(
        SpecError, match=r"train\.batch_size: 17 is more than the 16 training images \(data\.train_size 16\)"
    ):
        load_spec(None, ["data.train_size=16", "train.batch_size=17"])
    # The holdout comes out of the training set first.
    holdout = ["data.train_size=1000", "eval.temperature_scaling=true", "eval.holdout_size=950"]
    assert load_spec(None, [*holdout, "train.batch_size=50"]).train.batch_size == 50
    with pytest.raises(SpecError, match=r"train\.batch_size: 51 is more than the 50 training images"):
        load_spec(None, [*holdout, "train.batch_size=51"])


def test_replicas_beyond_any_one_run_are_refused_naming_the_field():
    # No machine has that many devices: refused by `lsjob validate`, not after the job waited in a queue.
    assert load_spec(None, ["runtime.replicas=4096", "train.batch_size=4096"]).runtime.replicas == 4096
    with pytest.raises(
        SpecError, match=r"runtime\.replicas: must be a number of devices from 1 to 4096, or all \(got 5000\)"
    ):
        load_spec(None, ["runtime.replicas=5000", "train.batch_size=5000"])


def test_resolved_yaml_round_trips(tmp_path):
    spec = load_spec(ROOT / "specs/smoke.yaml")
    again = load_spec(write(tmp_path, spec.to_yaml()))
    assert again == spec


@pytest.mark.parametrize(
    "text", ["1e-3", "1E5", "5e+3", ".5e3", "1.e5", "1_0e5", "-.5", "+.5", "-.inf", "010", "0x1F", "1:30", "off", "yes"]
)
def test_a_written_spec_reads_back_the_same_whatever_its_strings_look_like(tmp_path, text):
    # A run's spec.yaml and `lsjob show` must load back: `lsjob run RUN/spec.yaml` re-runs that run.
    run = text if RUN_NAME.fullmatch(text) else "x" + re.sub("[:+]", ".", text)
    spec = load_spec(None, [f"output.run='{run}'", f"output.root='{text}'",
                            f"runtime.compile_cache='{text}'"])  # fmt: skip
    assert load_spec(write(tmp_path, spec.to_yaml())) == spec
    assert load_spec(None, [f"output.root={yaml_string(text)}"]).output.root == Path(text)


def test_a_mapping_set_on_a_section_merges_into_it(tmp_path):
    spec = load_spec(write(tmp_path, "train: {batch_size: 32, epochs: 5}\n"), ["train={epochs: 3, lr: 0.01}"])
    assert (spec.train.batch_size, spec.train.epochs, spec.train.lr) == (32, 3, 0.01)


def test_a_section_left_empty_takes_its_defaults(tmp_path):
    # `train:` with its fields commented out is YAML's null.
    spec = load_spec(write(tmp_path, "train:\n#  epochs: 3\nsmoothing:\n"), ["train.seed=7"])
    assert spec.train == TrainSpec(seed=7) and spec.smoothing == SmoothingSpec()


def test_a_mapping_override_counts_as_the_fields_it_sets(tmp_path):
    # It merges, so it sets only its own fields: not a swept one, and not the file's bad one.
    sweep_spec = write(tmp_path, "sweep: {train.seed: [1, 2]}\n", "sweep.yaml")
    assert load_spec(sweep_spec, ["train={epochs: 2}"]).train.epochs == 2
    with pytest.raises(SpecError, match="train.seed is swept by this spec"):
        load_spec(sweep_spec, ["train={seed: 3}"])
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "train: {lr: -1}\n"), ["train={epochs: 3}", "data={train_size: 60000}"])
    lines = str(err.value).splitlines()
    assert "  train.lr: Input should be greater than 0 (got -1)" in lines
    assert "  data.train_size: CIFAR-10 has only 50,000 images there (got 60000) (from --set)" in lines
    # An empty mapping sets nothing: the file's own problems stay the file's, a swept field stays free.
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "train: {lr: -1}\n"), ["train={}"])
    assert "  train.lr: Input should be greater than 0 (got -1)" in str(err.value).splitlines()
    assert load_spec(sweep_spec, ["train={}"]).grids == [{"train.seed": [1, 2]}]
    assert (
        load_spec(write(tmp_path, "sweep: {train.seed: [1, 2]}\ntrain: {epochs: 2}\n"), ["train={}"]).train.epochs == 2
    )
    with pytest.raises(SpecError, match=r"train\.seed: .*\(from --set\)"):
        load_spec(None, ["train.seed={}"])


def test_a_path_yaml_reads_as_null_is_told_to_be_quoted():
    # `--set output.root=~` for one's home: YAML reads a bare ~ as null.
    with pytest.raises(SpecError, match=r"output.root: must be a path; quote it if YAML reads it as a number, a "
                       r"boolean or null \(~\) \(got None\) \(from --set\)"):  # fmt: skip
        load_spec(None, ["output.root=~"])


def test_a_compile_cache_folder_is_checked_as_a_path():
    with pytest.raises(SpecError, match="runtime.compile_cache: ~nosuchuser names no home directory"):
        load_spec(None, ["runtime.compile_cache=~nosuchuser/c"])


def test_a_problem_set_by_an_override_says_so_and_one_in_the_file_does_not(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(
            write(tmp_path, "train: {epochs: 0}\ntrain2: {seed: 1}\n"),
            ["train.eppochs=3", "smoothing={factor: 2}", "trian.seed=1", "train.seed={a: 1}"],
        )
    lines = str(err.value).splitlines()
    assert "  train.epochs: Input should be greater than 0 (got 0)" in lines
    # An unknown section is reported where it starts: `trian`, which only the --set wrote.
    assert any(line.startswith("  trian: unknown field") and line.endswith("(from --set)") for line in lines)
    assert any(line.startswith("  train2: unknown field") and not line.endswith("(from --set)") for line in lines)
    assert any(line.startswith("  train.eppochs: unknown field") and line.endswith("(from --set)") for line in lines)
    assert any(line.startswith("  smoothing.factor:") and line.endswith("(from --set)") for line in lines)
    # A mapping given to a field is reported at the field, which the --set wrote as train.seed.a.
    assert "  train.seed: Input should be a valid integer (from --set)" in lines


def test_a_yaml_error_names_the_file_and_an_alias_bomb_is_reported_at_once(tmp_path):
    with pytest.raises(SpecError, match=r'in ".*spec.yaml", line 2'):
        load_spec(write(tmp_path, "train:\n  epochs: [1\n"))
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    bomb = write(tmp_path, "\n".join(["x-anchors:", *(f"  {line}" for line in levels), "train: {epochs: *a7}", ""]))
    with pytest.raises(SpecError, match=r"train.epochs: Input should be a valid integer \(got \[\["):
        load_spec(bomb)  # the 10**8 items the value stands for are never printed whole (that took minutes)

    class NeverShown:
        def __repr__(self):
            raise AssertionError("the value was printed whole")

    assert spec_module._short([[1, 2], 3, 4, 5, NeverShown()]) == "[[1, 2], 3, 4, 5, ...]"


def test_schema_describes_every_section():
    schema = json_schema()
    assert set(schema["properties"]) == {"data", "smoothing", "train", "augment", "eval", "output", "runtime", "sweep"}
    assert "last key varying fastest" in schema["properties"]["sweep"]["description"]
    assert schema["$defs"]["SmoothingSpec"]["properties"]["method"]["enum"] == ["labels", "loss", "none"]
    json.dumps(schema)


MALFORMED = {
    "unknown section": ("trian: {epochs: 2}\n", "trian"),
    "unknown field": ("train: {epoch: 2}\n", "train.epoch"),
    "string for int": ('train: {epochs: "70"}\n', "train.epochs"),
    "float for int": ("train: {epochs: 2.5}\n", "train.epochs"),
    "zero epochs": ("train: {epochs: 0}\n", "train.epochs"),
    "negative batch": ("train: {batch_size: -64}\n", "train.batch_size"),
    "factor one": ("smoothing: {factor: 1.0}\n", "smoothing.factor"),
    "negative factor": ("smoothing: {factor: -0.1}\n", "smoothing.factor"),
    "unknown method": ("smoothing: {method: both}\n", "smoothing.method"),
    "nan lr": ("train: {lr: .nan}\n", "train.lr"),
    "inf lr": ("train: {lr: .inf}\n", "train.lr"),
    "momentum one": ("train: {momentum: 1.0}\n", "train.momentum"),
    "unknown source": ("data: {source: imagenet}\n", "data.source"),
    "path with synthetic": ("data: {source: synthetic, path: /x.tar.gz}\n", "data.path"),
    "run escaping root": ("output: {run: ../../etc}\n", "output.run"),
    "absolute run": ("output: {run: /tmp/x}\n", "output.run"),
    "run with slash": ("output: {run: a/b}\n", "output.run"),
    "bool as string": ("augment: {horizontal_flip: 'yes'}\n", "augment.horizontal_flip"),
    "unknown fill": ("augment: {fill_mode: mirror}\n", "augment.fill_mode"),
    # ImageDataGenerator reads a shift range of 1 or more as pixels, not a fraction: not the recipe's meaning.
    "whole-image shift": ("augment: {shift: 1.0}\n", "augment.shift"),
    "unknown precision": ("runtime: {mixed_precision: fp8}\n", "runtime.mixed_precision"),
    "section is a list": ("train: [1, 2]\n", "train"),
    "top level list": ("- train\n", "mapping"),
    "top level scalar": ("hello\n", "mapping"),
    "duplicate key": ("train: {epochs: 2}\ntrain: {epochs: 3}\n", "duplicate key"),
    "broken yaml": ("train: {epochs: 2\n", "not valid YAML"),
    "python object tag": ("train: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    "seed too large": ("train: {seed: 99999999999}\n", "train.seed"),
    "zero train size": ("data: {train_size: 0}\n", "data.train_size"),
    "more images than CIFAR-10": (
        "data: {train_size: 60000}\n",
        "data.train_size: CIFAR-10 has only 50,000 images there (got 60000)",
    ),
    "more test images than CIFAR-10": (
        "data: {test_size: 10001}\n",
        "data.test_size: CIFAR-10 has only 10,000 images there (got 10001)",
    ),
    "a synthetic set of gigabytes": (
        "data: {source: synthetic, train_size: 5000000}\n",
        "data.train_size: the synthetic set is made in memory, 1,000,000 images at most (got 5000000)",
    ),
    "section a number": ("smoothing: 0.1\n", "smoothing: is a section: give its fields as a mapping"),
    "octal-looking seed": ("train: {seed: 010}\n", "train.seed: Input should be a valid integer (got '010')"),
    "base-60 epochs": ("train: {epochs: 1:30}\n", "train.epochs: Input should be a valid integer (got '1:30')"),
    "hex seed": ("train: {seed: 0x1F}\n", "train.seed: Input should be a valid integer (got '0x1F')"),
    "replicas a boolean": ("runtime: {replicas: true}\n", "runtime.replicas: must be a number of devices from 1"),
    "jit_compile a word": ("runtime: {jit_compile: Auto}\n", "runtime.jit_compile: must be true, false or auto"),
    "run a number": ("output: {run: 2024}\n", "output.run: must be text; quote it"),
    "cache of an unknown user": ("data: {cache_dir: ~nosuchuser/c}\n", "~nosuchuser names no home directory"),
    "NUL in a path": ('data: {cache_dir: "a\\0b"}\n', "data.cache_dir: contains a NUL character"),
    "integer key": ("{1: 2}\n", "Keys should be strings"),
    "mapping as key": ("? {train: 1}\n: 2\n", "a mapping used as a key"),
    "list as key": ("[train]: 1\n", "a list used as a key"),
    "overflowing float": ("train: {epochs: 1e400}\n", "train.epochs"),
    "tab indentation": ("train:\n\tepochs: 2\n", "not valid YAML"),
    "date for seed": ("train: {seed: 2001-12-14}\n", "train.seed"),
    # PyYAML's constructors raise ValueError or KeyError, not a YAMLError, for a value its tag cannot take.
    "tagged int": ("train: {epochs: !!int 2x}\n", "a value's !!tag cannot read it (ValueError"),
    "tagged float": ("train: {lr: !!float 5e-3.}\n", "a value's !!tag cannot read it (ValueError"),
    "tagged bool": ("augment: {horizontal_flip: !!bool maybe}\n", "a value's !!tag cannot read it (KeyError"),
    "tagged impossible date": ("output: {run: !!timestamp 2024-02-30}\n", "a value's !!tag cannot read it"),
    # Copied from a --set: spelled right, but a file nests its fields.
    "dotted field in a file": (
        "train.epochs: 2\n",
        "train.epochs: a dotted path works in --set and sweep; in a file, nest it: `train:` then `  epochs:`",
    ),
    "dotted unknown field in a file": ("train.epoch: 2\n", "train.epoch: unknown field (check the spelling"),
    "binary tag": ("train: !!binary aGVsbG8=\n", "train"),
    "set tag": ("train: !!set {a, b}\n", "train"),
    "merge key": ("<<: {train: {epochs: 2}}\n", "merge keys (<<) are not supported; write the fields out"),
    "self-referencing alias": ("train: {seed: &a [1, *a]}\n", "contain itself"),
    "alias bomb": (
        "".join(
            f"{c}: &{c} [{', '.join([f'*{p}' if p else 'x'] * 9)}]\n" for p, c in zip(["", *"abcdefgh"], "abcdefghi")
        ),
        "unknown field",
    ),
    "nested thousands deep": ("train: " + "[" * 3000 + "]" * 3000 + "\n", "thousands deep"),
    "nested too deep": ("train: " + "{a: " * 20 + "1" + "}" * 20 + "\n", "nested more than 16 deep"),
    "run name too long": ("output: {run: " + "a" * 300 + "}\n", "output.run"),
    "zero steps per execution": ("runtime: {steps_per_execution: 0}\n", "runtime.steps_per_execution"),
    "holdout not an int": ("eval: {temperature_scaling: true, holdout_size: many}\n", "eval.holdout_size"),
    "holdout of everything": (
        "data: {train_size: 512}\neval: {temperature_scaling: true}\n",
        "eval.holdout_size: 5000 leaves no training images out of data.train_size 512",
    ),
    "holdout of the full set": ("eval: {temperature_scaling: true, holdout_size: 50000}\n", "out of all 50,000"),
    "batch above the data": (
        "data: {train_size: 100}\ntrain: {batch_size: 128}\n",
        "train.batch_size: 128 is more than the 100 training images",
    ),
    "batch above what the holdout leaves": (
        "data: {train_size: 1000}\ntrain: {batch_size: 64}\neval: {temperature_scaling: true, holdout_size: 950}\n",
        "more than the 50 training images (data.train_size 1000 less eval.holdout_size 950)",
    ),
    "sweep of an unknown field": ("sweep: {train.epoch: [1, 2]}\n", "train.epoch"),
    "sweep of an empty list": ("sweep: {smoothing.factor: []}\n", "smoothing.factor"),
    "sweep of no grids": ("sweep: []\n", "sweep"),
    "sweep of an empty grid": ("sweep: {}\n", "sweep"),
    "sweep of the output": ("sweep: {output.root: [a, b]}\n", "cannot be swept"),
    "sweep with a bad value": ("sweep: {smoothing.factor: [0.1, 2.0]}\n", "in point 1 (smoothing.factor=2"),
    "sweep with twin points": ("sweep: {smoothing.factor: [0.1, 0.10]}\n", "points 0 and 1 are the same run"),
    "sweep training one experiment twice": (
        "sweep: [{train.lr: [0.005, 0.01]}, {train.momentum: [0.9, 0.95]}]\n",
        "sweep points 0 and 2 are the same experiment under two names, labels-f0.1-s42-lr_0.005 (train.lr=0.005) "
        "and labels-f0.1-s42-momentum_0.9 (train.momentum=0.9)",
    ),
    "sweep values differing past 6 digits": (
        "sweep: {data.path: [a, b], smoothing.factor: [0.1234561, 0.1234562]}\n",
        "labels-f0.123456-s42-path_a (data.path=a, smoothing.factor=0.1234561) vs "
        "labels-f0.123456-s42-path_a (data.path=a, smoothing.factor=0.1234562)",
    ),
    "sweep naming its run": ("output: {run: x}\nsweep: {train.seed: [1, 2]}\n", "output.run"),
    "sweep not a mapping": ("sweep: smoothing.factor\n", "sweep"),
    "sweep of numbers": ("sweep: [1, 2]\n", "sweep"),
}
# Not text at all, or not a file.
MALFORMED_FILES = {
    "not utf-8": (b"train: {epochs: \xff\xfe}\n", "cannot read spec"),
    "nul bytes": (b"train: {epochs: 2}\x00\n", "not valid YAML"),
}


@pytest.mark.parametrize("text,needle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_specs_name_the_problem(tmp_path, text, needle):
    with pytest.raises(SpecError) as err:
        sweep.points(load_spec(write(tmp_path, text)))  # as `lsjob run` does, every sweep point too
    assert needle in str(err.value)
    assert err.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("data,needle", MALFORMED_FILES.values(), ids=MALFORMED_FILES.keys())
def test_malformed_files_name_the_problem(tmp_path, data, needle):
    (tmp_path / "spec.yaml").write_bytes(data)
    with pytest.raises(SpecError, match=needle):
        load_spec(tmp_path / "spec.yaml")


MALFORMED_OVERRIDES = [
    ["train.epochs"], ["=3"], ["train..epochs=3"], ["train.epochs=3", "train.epochs.x=3"], ["train.epochs=[1"],
    ["sweep.train.seed=[1]"], ["train.seed=" + "[" * 2000 + "]" * 2000], [".".join(["a"] * 40) + "=1"],
    ["train.epochs=!!int 2x"], ["augment.horizontal_flip=!!bool maybe"], ["output.run=!!timestamp 2024-02-30"],
]  # fmt: skip


@pytest.mark.parametrize("date", ["2024-02-28", "2024-02-30"])
def test_a_date_is_text_as_yaml_1_2_reads_it(tmp_path, date):
    # YAML 1.1's dates made `run: 2024-02-28` "not text" and `run: 2024-02-30` a crash in PyYAML.
    assert load_spec(write(tmp_path, f"output: {{run: {date}}}\n")).output.run == date
    spec = load_spec(None, [f"output.run={date}"])
    assert spec.output.run == date
    assert "run: '" in spec.to_yaml()  # quoted, so a YAML 1.1 reader (kubectl's) keeps it text too


@pytest.mark.parametrize(
    "item, kept",
    [
        ("output.root=/scratch/exp #2", "/scratch/exp #2"),
        ("output.root=#1", "#1"),
        ("output.root=runs # tmp", "runs # tmp"),
    ],
)
def test_an_override_yaml_would_cut_at_a_comment_is_refused_with_its_quoted_form(item, kept):
    with pytest.raises(SpecError, match="as a comment and drops it") as err:
        load_spec(None, [item])
    quoted = re.search(r'quote the value: --set "(.*)"$', str(err.value))[1]
    assert str(getattr(load_spec(None, [quoted]).output, item.split(".")[1].split("=")[0])) == kept
    assert load_spec(None, ["output.root=a#b"]).output.root == Path("a#b")  # no space: no comment


def test_a_note_after_a_number_is_refused_with_the_value_left_without_it():
    # Quoting, the advice for a path, made `train.epochs='2 #was 70'`: text, refused again.
    with pytest.raises(SpecError, match="as a comment and drops it") as err:
        load_spec(None, ["train.epochs=2 #was 70"])
    without = re.search(r'leave it out \(--set "(.*?)"\)', str(err.value))[1]
    assert without == "train.epochs=2" and load_spec(None, [without]).train.epochs == 2
    with pytest.raises(SpecError) as err:  # all comment: leaving it out leaves nothing
        load_spec(None, ["output.run=#1"])
    assert "leave it out" not in str(err.value) and "Part of a text value" in str(err.value)
    # Quoted already, the rest is a note: quoting it all would make the quotes part of the value.
    for item, without, field, value in (("output.root='/x y' #old", "\"output.root='/x y'\"", "root", Path("/x y")),
                                        ('output.run="r" #note', "'output.run=\"r\"'", "run", "r")):  # fmt: skip
        with pytest.raises(SpecError) as err:
            load_spec(None, [item])
        assert str(err.value).endswith(f"A note: leave it out (--set {without})")
        # Pasted into a shell, the word is the value without its note.
        assert getattr(load_spec(None, shlex.split(without)).output, field) == value


@pytest.mark.parametrize(
    "text", ["/results", "/scratch/exp #2", "a: b", "it's", "#", "true", "2024", " x ", "!!int 2x"]
)
def test_yaml_string_reads_back_as_the_same_string(text):
    from job.spec import yaml_string

    assert load_spec(None, ["output.run=x", f"output.root={yaml_string(text)}"]).output.root == Path(text)


@pytest.mark.parametrize("items", MALFORMED_OVERRIDES)
def test_malformed_overrides(items):
    with pytest.raises(SpecError):
        load_spec(None, items)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, "train: {epochs: 0, batch_size: 0}\nsmoothing: {factor: 2}\n"))
    assert "3 problem(s)" in str(err.value)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_bad_spec_cleanly_and_writes_nothing(tmp_path, command):
    spec = write(tmp_path, f"train: {{epochs: -1}}\noutput: {{root: {tmp_path / 'results'}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "job", command, str(spec)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert "train.epochs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def _corpus():
    yield from ((f"spec: {k}", text.encode(), []) for k, (text, _) in MALFORMED.items())
    yield from ((f"file: {k}", data, []) for k, (data, _) in MALFORMED_FILES.items())
    yield from ((f"--set: {' '.join(items)[:40]}", b"", items) for items in MALFORMED_OVERRIDES)
    # YAML that would run a command if it were loaded unsafely: it must not.
    yield "code in a tag", b"train: !!python/object/apply:os.system ['touch CANARY']\n", []
    yield "code in an override", b"", ["train.seed=!!python/object/apply:os.system ['touch CANARY']"]


CORPUS = list(_corpus())


@pytest.mark.parametrize("command", ["run", "validate"])
def test_the_whole_bad_input_corpus_through_the_cli(tmp_path, monkeypatch, capsys, command):
    """Every malformed spec, file and override as users run them: `lsjob run SPEC` exits 2
    with a message, no traceback, no code run and nothing written."""
    monkeypatch.chdir(tmp_path)
    assert len(CORPUS) >= 30 + 2
    for name, data, items in CORPUS:
        spec = tmp_path / "spec.yaml"
        spec.write_bytes(data)
        sets = [a for item in [*items, f"output.root={tmp_path / 'results'}"] for a in ("--set", item)]
        monkeypatch.setattr(sys, "argv", ["lsjob", command, str(spec), *(sets if command == "run" else sets[:-2])])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        out, err = capsys.readouterr()
        assert exited.value.code == EXIT_BAD_INPUT, (name, out, err)
        assert err.startswith("lsjob: error: ") or "Usage:" in err, (name, err)
        assert "Traceback" not in err + out, (name, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"], name


def test_cli_show_prints_the_resolved_spec(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "job", "show", str(ROOT / "specs/seed-loss.yaml"), "--set", "train.epochs=3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    shown = load_spec(write(tmp_path, proc.stdout))
    assert shown == load_spec(ROOT / "specs/seed-loss.yaml", ["train.epochs=3"])


def test_cli_schema_is_json():
    proc = subprocess.run([sys.executable, "-m", "job", "schema"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == Spec.__name__


def spec_table() -> str:
    """README's table of spec fields, as the models say them: path, default, description."""
    defaults = load_spec(None).model_dump(mode="json")
    rows = ["| field | default | meaning |", "| --- | --- | --- |"]

    def row(path, value, description):
        assert description and "|" not in description, f"{path}: a description, and one without | (a table column)"
        shown = "unset" if value is None else f"`{json.dumps(value) if isinstance(value, bool) else value}`"
        rows.append(f"| `{path}` | {shown} | {description} |")

    for name, info in Spec.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            for field, sub in info.annotation.model_fields.items():
                row(f"{name}.{field}", defaults[name][field], sub.description)
        else:
            row(name, defaults[name], info.description)
    return "\n".join(rows)


def test_readme_tables_every_spec_field_as_the_schema_gives_its_default_and_description():
    # The table is what users read, the schema what editors show, the model what runs: one text for all.
    readme = (ROOT / "README.md").read_text()
    table = "| field |" + readme.split("\n| field |", 1)[1].split("\n\n", 1)[0]
    assert table == spec_table(), f"README's spec table should read:\n{spec_table()}"


def test_the_compile_cache_is_a_keyword_or_a_folder_and_not_part_of_the_run_identity():
    assert load_spec(None).runtime.compile_cache == "auto"
    assert load_spec(None, ["runtime.compile_cache=~/cc"]).runtime.compile_cache == "~/cc"
    assert load_spec(None, ["runtime.compile_cache=/x"]).content_hash() == load_spec(None).content_hash()
    with pytest.raises(SpecError, match=r"runtime.compile_cache: write off in lower case \(or ./Off"):
        load_spec(None, ["runtime.compile_cache=Off"])
    # As jit_compile takes false: a boolean is pointed to the keyword meant.
    with pytest.raises(SpecError, match=r"compile_cache: must be auto, off or a folder \(got false\): write off to"):
        load_spec(None, ["runtime.compile_cache=false"])
    with pytest.raises(SpecError, match=r"\(got true\): write auto for the default folder"):
        load_spec(None, ["runtime.compile_cache=true"])


def test_a_results_root_under_home_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_spec(None, ["output.root=~/lsjob-results", "output.run=r"])
    assert spec.run_dir == tmp_path / "lsjob-results" / "r"


# A run's folder is output.root/output.run: a name like ".." would put it outside the root.
def test_a_run_name_is_128_characters_at_most_and_cannot_climb_out_of_the_root(tmp_path):
    assert load_spec(None, ["output.run=" + "a" * 128]).output.run == "a" * 128
    for bad in ["a" * 129, "..", ".", ".hidden", "-rf", "_x"]:
        with pytest.raises(SpecError, match=r"output\.run: must be 1-128 letters, digits"):
            load_spec(None, [f"output.run='{bad}'"])
    # A newline would end up in the directory's name: YAML can hold one in a quoted string.
    with pytest.raises(SpecError, match=r"output\.run: must be 1-128 letters"):
        load_spec(write(tmp_path, 'output: {run: "x\\n"}\n'))


def test_a_size_of_exactly_the_whole_set_is_allowed():
    spec = load_spec(None, ["data.train_size=50000", "data.test_size=10000"])
    assert (spec.data.train_size, spec.data.test_size) == (50_000, 10_000)
    synthetic = load_spec(None, ["data.source=synthetic", "data.train_size=1000000", "data.test_size=1000000"])
    assert synthetic.data.train_size == 1_000_000
    with pytest.raises(SpecError, match=r"data\.test_size: the synthetic set is made in memory, 1,000,000"):
        load_spec(None, ["data.source=synthetic", "data.test_size=1000001"])


# A seed must fit a 32-bit signed int (TensorFlow's, NumPy's legacy).
def test_the_largest_seed_is_2_to_the_31_less_one():
    assert load_spec(None, [f"train.seed={2**31 - 1}"]).train.seed == 2**31 - 1
    with pytest.raises(SpecError, match=r"train\.seed: Input should be less than 2147483648"):
        load_spec(None, [f"train.seed={2**31}"])


def test_temperature_scaling_on_an_empty_holdout_is_refused():
    with pytest.raises(SpecError, match=r"eval\.holdout_size: Input should be greater than 0 \(got 0\)"):
        load_spec(None, ["eval.temperature_scaling=true", "eval.holdout_size=0"])


# `lsjob run` names what differs in a fixed, alphabetical order: the same two specs, the same message.
def test_what_differs_between_two_identities_is_listed_in_field_order():
    changed = ["train.lr=0.01", "augment.shift=0.2", "train.epochs=3", "data.source=synthetic", "smoothing.factor=0.2"]
    assert identity_differences(load_spec(None), load_spec(None, changed)) == [
        "augment.shift: 0.1 -> 0.2",
        'data.source: "cifar10" -> "synthetic"',
        "smoothing.factor: 0.1 -> 0.2",
        "train.epochs: 70 -> 3",
        "train.lr: 0.005 -> 0.01",
    ]


def test_a_field_one_side_ignores_reads_unused_there_not_its_default():
    # The default the identity counts it at (5000) is one the user never wrote nor the run used.
    scaled = load_spec(None, ["eval.temperature_scaling=true", "eval.holdout_size=128"])
    assert identity_differences(load_spec(None), scaled) == [
        "eval.holdout_size: unused -> 128",
        "eval.temperature_scaling: false -> true",
    ]
    smoothed = load_spec(None, ["smoothing.factor=0.2"])
    assert identity_differences(smoothed, load_spec(None, ["smoothing.method=none", "smoothing.factor=0.2"])) == [
        "smoothing.factor: 0.2 -> unused",
        'smoothing.method: "labels" -> "none"',
    ]


# A run's spec.yaml and `lsjob show` of a spec with no sweep say nothing of one.
def test_a_spec_without_a_sweep_is_written_without_one(tmp_path):
    assert "sweep" not in load_spec(None).to_yaml()
    swept = load_spec(write(tmp_path, "sweep: {train.seed: [1, 2]}\n"))
    assert "sweep:" in swept.to_yaml() and load_spec(write(tmp_path, swept.to_yaml(), "again.yaml")) == swept


# `sweep:` with its grid commented out is no sweep, as
# `train:` with its fields commented out is the train defaults.
def test_a_sweep_left_empty_is_no_sweep(tmp_path):
    spec = load_spec(write(tmp_path, "sweep:\n#  train.seed: [1, 2]\n"))
    assert spec.sweep is None and spec.grids == []


def test_a_spec_that_is_not_a_text_file_says_what_to_give_instead(tmp_path):
    with pytest.raises(SpecError, match=r"^spec .* is a directory; give a YAML file$"):
        load_spec(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("output: {run: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"cannot read spec .*latin1\.yaml: .*; save it as UTF-8$"):
        load_spec(tmp_path / "latin1.yaml")
    # Not read whole: /dev/zero would fill the memory.
    with pytest.raises(SpecError, match=r"^spec /dev/zero is over 1 MiB, more than any spec; is it the right file\?$"):
        load_spec(Path("/dev/zero"))


# A shared alias counts as deep as the place it is used.
def test_an_alias_used_deeper_than_it_is_defined_counts_at_its_deepest(tmp_path):
    # &a is 10 lists deep at depth 1 (11 levels: fine there); used at depth 7 it reaches 17.
    text = "x: &a " + "[" * 10 + "]" * 10 + "\ntrain: {seed: " + "[" * 5 + "*a" + "]" * 5 + "}\n"
    with pytest.raises(SpecError, match="lists or mappings nested more than 16 deep; a spec needs 4"):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize("item", ["train..epochs=3", "=3", "train.=3", ".epochs=3"])
def test_an_override_with_an_empty_key_part_shows_the_expected_form(item):
    with pytest.raises(SpecError, match=r"expected dotted\.key=value, e\.g\. --set train\.epochs=2"):
        load_spec(None, [item])


# A problem across fields is headed by the field it names first, as any other ("(top level)" said
# nothing), and says where that field came from; a message with its own "(got ...)" gets no second one.
def test_problem_lines_read_as_one_sentence_each():
    with pytest.raises(SpecError) as err:
        load_spec(None, ["data.train_size=16", "train.batch_size=17"])
    line = str(err.value).splitlines()[1]
    assert line.startswith("  train.batch_size: 17 is more than the 16") and line.endswith(" (from --set)"), line
    with pytest.raises(SpecError) as err:
        load_spec(None, ["runtime.jit_compile=Auto"])
    assert (
        str(err.value).splitlines()[1] == "  runtime.jit_compile: must be true, false or auto (got 'Auto') (from --set)"
    )
