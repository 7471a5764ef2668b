"""Sweeps: a stable grid order, one directory per point, and each task picking its own point."""

import pytest
from conftest import ROOT

from job import sweep
from job.errors import SpecError
from job.spec import load_spec


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


GRID = """
sweep:
  smoothing.method: [labels, loss]
  smoothing.factor: [0.05, 0.1]
  train.seed: [1, 2]
"""


def test_points_follow_the_grid_in_the_order_written_last_key_fastest(tmp_path):
    points = sweep.points(load_spec(write(tmp_path, GRID)))
    assert [(p.spec.smoothing.method, p.spec.smoothing.factor, p.spec.train.seed) for p in points] == [
        (m, f, s) for m in ("labels", "loss") for f in (0.05, 0.1) for s in (1, 2)
    ]
    assert [p.index for p in points] == list(range(8))
    assert points[5].values == {"smoothing.method": "loss", "smoothing.factor": 0.05, "train.seed": 2}


def test_each_point_is_an_ordinary_run_in_its_own_directory_named_by_its_values(tmp_path):
    spec = load_spec(write(tmp_path, GRID + "output: {root: out}\n"))
    points = sweep.points(spec)
    assert [p.run_name for p in points][:3] == ["labels-f0.05-s1", "labels-f0.05-s2", "labels-f0.1-s1"]
    assert len({p.spec.run_dir for p in points}) == 8
    for p in points:
        assert p.spec.sweep is None and p.spec.run_dir.parent.name == "out"
    # A point's spec.yaml, run on its own, is the same run.
    again = load_spec(write(tmp_path, points[3].spec.to_yaml()))
    assert again == points[3].spec and sweep.points(again)[0].run_name == points[3].run_name


def test_fields_beyond_method_factor_seed_are_named_too(tmp_path):
    points = sweep.points(
        load_spec(write(tmp_path, "sweep: {train.lr: [0.01, 0.1], augment.horizontal_flip: [false]}"))
    )
    assert [p.run_name for p in points] == [
        "labels-f0.1-s42-lr_0.01-horizontal_flip_false",
        "labels-f0.1-s42-lr_0.1-horizontal_flip_false",
    ]


def test_a_list_of_grids_runs_one_after_another_and_gives_the_baseline_its_own(tmp_path):
    spec = load_spec(ROOT / "specs" / "sweep-factors.yaml")
    points = sweep.points(spec)
    assert len(points) == 2 * 4 * 3 + 3
    assert [p.run_name for p in points[-3:]] == ["none-s1", "none-s2", "none-s3"]
    assert points[0].run_name == "labels-f0.05-s1"


def test_shipped_sweep_specs_expand(tmp_path):
    assert [p.run_name for p in sweep.points(load_spec(ROOT / "specs" / "smoke-sweep.yaml"))] == [
        "labels-f0.1-s42", "loss-f0.1-s42", "none-s42",
    ]  # fmt: skip


def test_two_points_that_would_share_a_directory_are_refused(tmp_path):
    spec = load_spec(write(tmp_path, "sweep: {smoothing.method: [none, labels], smoothing.factor: [0.1, 0.2]}"))
    with pytest.raises(SpecError, match=r"points 0 and 1 would both write run 'none-s42'.*its own grid"):
        sweep.points(spec)


@pytest.mark.parametrize(
    "grids",
    [
        "[{train.lr: [0.005, 0.01]}, {train.momentum: [0.9, 0.95]}]",  # the baseline in both grids
        "{train.eval_batch_size: [128, 256]}",  # a field that changes no result
        "{train.lr_reference_batch: [64, 128]}",  # one the spec ignores (lr_scaling: none)
        "{data.train_size: [5000, null, 50000]}",  # all of CIFAR-10's training set, twice
    ],
)
def test_one_experiment_under_two_names_is_refused(tmp_path, grids):
    with pytest.raises(SpecError, match=r"sweep points \d and \d are the same experiment under two names"):
        sweep.points(load_spec(write(tmp_path, f"sweep: {grids}")))


def test_growing_a_sweep_keeps_the_names_and_identity_of_its_finished_runs(tmp_path):
    small = sweep.points(load_spec(write(tmp_path, "sweep: {train.seed: [1, 2]}")))
    grown = sweep.points(load_spec(write(tmp_path, "sweep: {train.seed: [1, 2, 3]}")))
    for before, after in zip(small, grown):
        assert before.run_name == after.run_name
        assert before.spec.content_hash() == after.spec.content_hash()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("sweep: {smoothing.facter: [0.1]}", r"sweep: 'smoothing.facter': not a spec field; smoothing has"),
        ("sweep: {trian.seed: [1]}", r"'trian.seed': not a spec field.*sections: data"),
        ("sweep: {output.root: [a, b]}", r"'output.root': output is the same for every point"),
        ("sweep: {train.seed: []}", r"sweep.yaml: 1 problem\(s\)\n  sweep: train.seed: the list of values is empty$"),
        ("sweep: {train.seed: 3}", r"1 problem\(s\)\n  sweep: train.seed: give a list of values, e.g. \[3\]$"),
        ("sweep: {}", r"sweep.yaml: 1 problem\(s\)\n  sweep: the grid is empty; give at least one field"),
        ("sweep: []", r"sweep.yaml: 1 problem\(s\)\n  sweep: an empty list of grids"),
        ("sweep: smoothing.factor", r"1 problem\(s\)\n  sweep: must map dotted field paths to lists of values"),
        ("sweep: [{train.seed: [1]}, 2]", r"sweep.yaml: 1 problem\(s\)\n  sweep: grid 1 is 2, not a mapping"),
        ("sweep: {1: [2]}", r"sweep.yaml: 1 problem\(s\)\n  sweep: 1: a key is a dotted field path"),
        ("sweep: {train.seed: [1]}\noutput: {run: mine}", r"output.run: cannot be set in a sweep"),
    ],
)
def test_a_malformed_sweep_is_refused_naming_the_key(tmp_path, text, problem):
    with pytest.raises(SpecError, match=problem):
        sweep.points(load_spec(write(tmp_path, text)))


def test_a_bad_value_names_the_point_and_its_values(tmp_path):
    spec = load_spec(write(tmp_path, "sweep: {smoothing.factor: [0.1, 1.5]}"))
    with pytest.raises(SpecError) as err:
        sweep.points(spec)
    assert str(err.value).splitlines() == [
        "sweep: 1 of 2 points invalid",
        "  smoothing.factor: Input should be less than 1 (got 1.5)",
        "    in point 1 (smoothing.factor=1.5)",
    ]


@pytest.mark.parametrize(
    "base, grid, values",
    [
        # The default holdout (5000) against 256 images: refused though no point holds out 5000.
        ("data: {source: synthetic, train_size: 256}\neval: {temperature_scaling: true}",
         "eval.holdout_size: [64, 128]", [64, 128]),
        ("data: {source: synthetic, train_size: 4000}\neval: {temperature_scaling: true}",
         "data.train_size: [10000, 20000]", [10000, 20000]),
        ("runtime: {replicas: 3}", "train.batch_size: [96, 192]", [96, 192]),  # the default 64 does not split
    ],
)  # fmt: skip
def test_a_check_across_fields_is_made_on_each_point_not_on_the_base_value_a_sweep_replaces(
    tmp_path, base, grid, values
):
    spec = load_spec(write(tmp_path, f"{base}\nsweep:\n  {grid}"))
    field = grid.split(":")[0]
    assert [point.values[field] for point in sweep.points(spec)] == values
    # A point that breaks the check is named, as any bad point is.
    bad = 300 if field == "eval.holdout_size" else 100 if field == "train.batch_size" else 3000
    spec = load_spec(write(tmp_path, f"{base}\nsweep:\n  {field}: [{values[0]}, {bad}]"))
    with pytest.raises(SpecError, match=rf"in point 1 \({field}={bad}\)"):
        sweep.points(spec)


def test_every_bad_point_is_reported_at_once_each_problem_once(tmp_path):
    text = "sweep: {smoothing.factor: [0.1, 1.5], train.batch_size: [64, 0], train.seed: [1, 2]}"
    with pytest.raises(SpecError) as err:
        sweep.points(load_spec(write(tmp_path, text)))
    assert str(err.value).splitlines() == [
        "sweep: 6 of 8 points invalid",
        "  train.batch_size: Input should be greater than 0 (got 0)",
        "    in points 2, 3, 6, 7; point 2 is smoothing.factor=0.1, train.batch_size=0, train.seed=1",
        "  smoothing.factor: Input should be less than 1 (got 1.5)",
        "    in points 4, 5, 6, 7; point 4 is smoothing.factor=1.5, train.batch_size=64, train.seed=1",
    ]


def test_a_long_list_of_bad_points_is_cut_short(tmp_path):
    text = "sweep: {smoothing.factor: [1.5], train.seed: [" + ", ".join(map(str, range(30))) + "]}"
    with pytest.raises(SpecError) as err:
        sweep.points(load_spec(write(tmp_path, text)))
    assert "in points 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (30 in all); point 0 is" in str(err.value)


def test_a_run_name_too_long_for_a_directory_is_refused(tmp_path):
    long = "x" * 130
    expected = r"1 of 2 points invalid\n  output.run: .* 151 characters, more than 128; its longest part, "
    expected += r"'path_x{55}'... \(135\), comes from a swept value: sweep shorter values"
    with pytest.raises(SpecError, match=expected):
        sweep.points(load_spec(write(tmp_path, f"sweep: {{data.path: [short, {long}]}}")))


def test_swept_values_cannot_lead_outside_the_results_root(tmp_path):
    text = f"output: {{root: {tmp_path}}}\nsweep: {{data.path: ['../../etc', /abs/path, '..', 'a/../../b']}}"
    points = sweep.points(load_spec(write(tmp_path, text)))
    for p in points:
        assert p.spec.run_dir.parent == tmp_path and "/" not in p.run_name
        assert p.spec.run_dir.resolve().parent == tmp_path.resolve()
    assert [p.run_name.rsplit("-", 1)[1] for p in points] == [
        "path_etc", "path_abs_path", "path__", "path_a_.._.._b",
    ]  # fmt: skip


def test_set_cannot_change_the_sweep_or_a_swept_field(tmp_path):
    path = write(tmp_path, GRID)
    with pytest.raises(SpecError, match="smoothing.factor is swept by this spec"):
        load_spec(path, ["smoothing.factor=0.3"])
    with pytest.raises(SpecError, match="smoothing.factor, smoothing.method are swept by this spec"):  # a section
        load_spec(path, ["smoothing={method: loss, factor: 0.5}"])
    with pytest.raises(SpecError, match="the sweep cannot be changed with --set"):
        load_spec(path, ["sweep.train.seed=[3]"])
    assert {p.spec.train.epochs for p in sweep.points(load_spec(path, ["train.epochs=3"]))} == {3}


class TestSelect:
    points = sweep.points(load_spec(None, ["train.epochs=1"]))  # a plain spec is one point

    @staticmethod
    def grid(n):
        return sweep.points(
            load_spec(None, ["train.seed=0"]).model_copy(update={"sweep": {"train.seed": list(range(n))}})
        )

    def test_index_flag_wins_over_the_environment(self):
        pts = self.grid(4)
        assert sweep.select(pts, 2, {"SLURM_ARRAY_TASK_ID": "3"}).index == 2

    @pytest.mark.parametrize("var", sweep.INDEX_ENV)
    def test_scheduler_variables_pick_the_point(self, var):
        assert sweep.select(self.grid(4), None, {var: "3"}).spec.train.seed == 3

    def test_slurm_is_read_before_kubernetes(self):
        env = {"SLURM_ARRAY_TASK_ID": "1", "JOB_COMPLETION_INDEX": "2"}
        assert sweep.select(self.grid(4), None, env).index == 1

    def test_spaces_around_the_index_are_ignored_and_a_blank_one_is_unset(self):
        # A wrapper script or a templated Job manifest may pass the index padded, or set but empty.
        assert sweep.select(self.grid(4), None, {"SLURM_ARRAY_TASK_ID": " 1 \n"}).index == 1
        assert sweep.select(self.grid(4), None, {"SLURM_ARRAY_TASK_ID": "  ", "JOB_COMPLETION_INDEX": "2"}).index == 2
        with pytest.raises(SpecError, match=r"a sweep of 4 runs: pick one with --index"):
            sweep.select(self.grid(4), None, {"SLURM_ARRAY_TASK_ID": "  "})

    @pytest.mark.parametrize("raw", ["x", "-1", "1.0", "1-3", "0x1", "\uff11", "\u0661"])  # fullwidth, Arabic-Indic 1
    def test_a_malformed_index_is_refused(self, raw):
        with pytest.raises(SpecError, match=rf"JOB_COMPLETION_INDEX='{raw}' is not a sweep index"):
            sweep.select(self.grid(4), None, {"JOB_COMPLETION_INDEX": raw})

    @pytest.mark.parametrize("index", [4, -1, 100])
    def test_out_of_range_says_the_valid_range(self, index):
        with pytest.raises(SpecError, match=r"out of range: the spec has 4 points \(0..3\).*--array=0-3"):
            sweep.select(self.grid(4), index, {})

    def test_a_sweep_needs_an_index(self):
        with pytest.raises(SpecError, match=r"a sweep of 4 runs: pick one with --index 0..3"):
            sweep.select(self.grid(4), None, {})

    @pytest.mark.parametrize("var", sweep.INDEX_ENV)
    def test_an_offset_moves_a_later_arrays_tasks_onto_their_points(self, var):
        # slurm/submit.sh's second array of a sweep past MaxArraySize: its task 1 is point 3.
        assert sweep.select(self.grid(5), None, {var: "1"}, offset=2).spec.train.seed == 3
        with pytest.raises(SpecError, match=rf"{var} 3 \+ --index-offset 2 = 5 is out of range: .* 5 points \(0..4\); "
                           "slurm/submit.sh sizes"):  # fmt: skip
            sweep.select(self.grid(5), None, {var: "3"}, offset=2)

    def test_an_offset_without_an_array_index_is_refused_not_ignored(self):
        # Ignored, every task of an array would train the wrong point.
        with pytest.raises(SpecError, match=r"--index-offset 2 adds to the array index, but neither "
                           "SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set"):  # fmt: skip
            sweep.select(self.grid(5), None, {}, offset=2)
        with pytest.raises(SpecError, match=r"with --index, give the point itself and no offset"):
            sweep.select(self.grid(5), 1, {"SLURM_ARRAY_TASK_ID": "1"}, offset=2)
        with pytest.raises(SpecError, match=r"--index-offset 2 adds to the array index, but this spec is not a sweep"):
            sweep.select(self.points, None, {"SLURM_ARRAY_TASK_ID": "1"}, offset=2)

    def test_a_plain_spec_is_point_zero_whatever_array_task_runs_it(self):
        assert sweep.select(self.points, None, {}).index == 0
        # An array over spec files: `lsjob run run-$SLURM_ARRAY_TASK_ID.yaml`.
        assert sweep.select(self.points, None, {"SLURM_ARRAY_TASK_ID": "7"}).index == 0
        assert sweep.select(self.points, None, {"JOB_COMPLETION_INDEX": "x"}).index == 0
        with pytest.raises(SpecError, match=r"--index 1 is out of range: the spec has 1 point \(0..0\)"):
            sweep.select(self.points, 1, {})
        one_point_sweep = sweep.points(load_spec(None, ["train.epochs=1"]).model_copy(
            update={"sweep": {"train.seed": [5]}}))  # fmt: skip
        with pytest.raises(SpecError, match=r"SLURM_ARRAY_TASK_ID 1 is out of range: the spec has 1 point"):
            sweep.select(one_point_sweep, None, {"SLURM_ARRAY_TASK_ID": "1"})


def test_a_swept_float_is_named_by_its_value_to_six_digits_as_the_factor_is(tmp_path):
    # A run named lr_0.012 that trained at 0.0125 misleads whoever reads the listing, and two
    # values that differ in the third digit must not be refused as one run.
    points = sweep.points(load_spec(write(tmp_path, "sweep: {train.lr: [0.0125, 0.012, 1e-05, 1.0]}")))
    assert [p.run_name for p in points] == [
        "labels-f0.1-s42-lr_0.0125",
        "labels-f0.1-s42-lr_0.012",
        "labels-f0.1-s42-lr_1e-05",
        "labels-f0.1-s42-lr_1",
    ]
