"""Property-based fuzzing of the spec loader: whatever a user (or an attacker) writes, the
answer is a Spec or a SpecError naming the problem, never a traceback.

Three kinds of documents: near-valid ones built from the schema's own section and field
names (so validation goes deep), arbitrary YAML trees, and byte-level mutations of the
shipped specs. Every accepted spec is then expanded as a sweep and its run directories
are checked to stay inside the results root, as `lsjob run --index` would use them.
"""

import string
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test dependency: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from job import sweep  # noqa: E402
from job.errors import EXIT_BAD_INPUT, SpecError  # noqa: E402
from job.spec import Spec, load_spec  # noqa: E402

SECTIONS = {name: list(field.annotation.model_fields) for name, field in Spec.model_fields.items() if name != "sweep"}
FIELD_PATHS = [f"{section}.{field}" for section, fields in SECTIONS.items() for field in fields]
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["off", "bf16", "auto", "labels", "loss", "none", "synthetic", "cifar10", "nearest",
                     "../..", "/etc/passwd", "a/b", ".", "", "\x00", "5e-3", "70", "yes", "~"]),
)  # fmt: skip
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.sampled_from(FIELD_PATHS)), children,
                        max_size=4),
    ),
    max_leaves=12,
)  # fmt: skip


@st.composite
def near_valid_documents(draw):
    doc = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "sweep", "trian"]), max_size=5, unique=True)):
        if section == "sweep":
            grid = draw(st.dictionaries(st.sampled_from([*FIELD_PATHS, "train.epoch", "output"]),
                                        st.lists(scalars, max_size=3), min_size=0, max_size=3))  # fmt: skip
            doc["sweep"] = draw(st.sampled_from([grid, [grid, grid], grid or None, "smoothing.factor"]))
            continue
        fields = SECTIONS.get(section, ["epochs"])
        doc[section] = draw(
            st.one_of(
                st.dictionaries(st.sampled_from([*fields, "typo"]), st.one_of(scalars, trees), max_size=4),
                trees,
            )
        )
    return doc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@pytest.fixture(scope="module")
def spec_file():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "spec.yaml"


def load_or_refuse(path: Path, text: str | bytes, overrides=()):
    """load_spec, then what `lsjob run` does with a spec before training: expand the sweep
    and place every point's run directory. Only a SpecError may come out."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        spec = load_spec(path, list(overrides))
        for point in sweep.points(spec):
            root = point.spec.output.root
            run_dir = point.spec.run_dir
            assert run_dir.parent == root and run_dir.name not in ("", ".", ".."), run_dir
            point.spec.to_yaml()
            point.spec.content_hash()
    except SpecError as e:
        assert e.exit_code == EXIT_BAD_INPUT
        assert str(e).strip()


@FUZZ
@given(doc=near_valid_documents())
def test_near_valid_documents_load_or_are_refused(spec_file, doc):
    load_or_refuse(spec_file, _dump(doc))


@FUZZ
@given(doc=trees)
def test_arbitrary_yaml_trees_load_or_are_refused(spec_file, doc):
    load_or_refuse(spec_file, _dump(doc))


@FUZZ
@given(
    original=st.sampled_from(SHIPPED),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["delete", "insert", "replace"]),
                             st.sampled_from(list(string.printable) + ["\x00", "\xff", "&a", "*a", "!!", "{[", "\t"])),
                   min_size=1, max_size=6),
)  # fmt: skip
def test_mutated_shipped_specs_load_or_are_refused(spec_file, original, edits):
    text = original.read_text()
    for where, how, piece in edits:
        i = int(where * len(text))
        if how == "delete":
            text = text[:i] + text[i + len(piece) :]
        elif how == "insert":
            text = text[:i] + piece + text[i:]
        else:
            text = text[:i] + piece + text[i + len(piece) :]
    load_or_refuse(spec_file, text)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(17, 1500), kind=st.sampled_from(["[", "{a: "]), where=st.sampled_from(["train", "sweep"]))
def test_deeply_nested_documents_are_refused(spec_file, depth, kind, where):
    closing = "]" if kind == "[" else "}"
    spec_file.write_text(f"{where}: " + kind * depth + "1" + closing * depth + "\n")
    with pytest.raises(SpecError, match="nest"):
        load_spec(spec_file)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_load_or_are_refused(spec_file, data):
    load_or_refuse(spec_file, data)


@settings(max_examples=200, deadline=None)
@given(
    overrides=st.lists(
        st.builds(lambda key, value: f"{key}={value}",
                  st.one_of(st.sampled_from(FIELD_PATHS), st.text(max_size=12)),
                  st.one_of(st.text(max_size=12),
                            st.sampled_from(["[1", "{a: 1}", "&a [*a]", "!!python/name:os.system"]))),
        max_size=3,
    )
)  # fmt: skip
def test_arbitrary_overrides_load_or_are_refused(spec_file, overrides):
    load_or_refuse(spec_file, (ROOT / "specs" / "smoke-sweep.yaml").read_text(), overrides)


def test_the_fuzzing_reaches_both_outcomes(spec_file):
    # Never vacuous: the generators produce specs that load as well as ones refused.
    loaded = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(doc=near_valid_documents())
    def count(doc):
        spec_file.write_text(_dump(doc))
        try:
            load_spec(spec_file)
            loaded.append(True)
        except SpecError:
            loaded.append(False)

    count()
    assert any(loaded) and not all(loaded), f"{sum(loaded)} of {len(loaded)} generated documents loaded"
