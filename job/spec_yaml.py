"""YAML as a spec is written: YAML 1.2's numbers and booleans (PyYAML reads YAML 1.1), no
duplicate keys, and bounded in size and depth; and a dumper whose output reads back the same."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from job.errors import SpecError


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):  # `? {a: 1}` or `[a]: 1`: a key no field has
            kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
            raise yaml.constructor.ConstructorError(
                None, None, f"a {kind} used as a key; keys are field names", key_node.start_mark
            )
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Numbers and booleans as YAML 1.2 reads them, not PyYAML's YAML 1.1, which reads `5e-3` (no
# dot: how learning rates are written) as a string, yes/no/on/off as booleans (so
# `mixed_precision: off` arrived as False), 010 as 8 (octal), 0x1F as 31 and 1:30 as 90 (base
# 60). A seed of 010 or a run named 0x1F is then refused or kept as written, never changed.
_NUMBERS_AND_BOOLS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
# Nor dates, which YAML 1.2 does not have: a run named 2024-02-28 was refused as "not text", and
# 2024-02-30 crashed PyYAML's date constructor. Both are text now, as quoted.
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_YAML12_RESOLVERS = [
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    ),
]
SpecLoader.yaml_implicit_resolvers = {  # this class's own copy: SafeLoader's is shared by all of PyYAML
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBERS_AND_BOOLS | {_TIMESTAMP}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _regex, _first in _YAML12_RESOLVERS:
    SpecLoader.add_implicit_resolver(_tag, _regex, _first)


class SpecDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string the loader above, or a YAML 1.1 reader, would take for
    a number or a boolean (`1e-3`, `-.5`, `off`, `010`), so what it writes (`lsjob show`, a run's
    spec.yaml, a manifest for kubectl, whose reader takes `1e3` for a number) reads back the same."""


for _tag, _regex, _first in _YAML12_RESOLVERS:
    SpecDumper.add_implicit_resolver(_tag, _regex, _first)


# A spec is a page of YAML; a sweep's grids, a few more. /dev/zero, or a wrong file, is not read whole.
MAX_SPEC_BYTES = 1 << 20


def read_yaml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            problem = f"spec {path} is over {MAX_SPEC_BYTES >> 20} MiB, more than any spec; is it the right file?"
            raise SpecError(problem)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"spec {path} is a directory; give a YAML file") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"cannot read spec {path}: {e}; save it as UTF-8") from None
    except OSError as e:
        raise SpecError(f"cannot read spec {path}: {e}") from None
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as e:
        # PyYAML's words for a merge key (<<), to which this loader gives no meaning (YAML 1.2 has none).
        why = str(e).replace(f"for the tag '{_MERGE}'", f"for the tag '{_MERGE}': merge keys (<<) are not "
                             "supported; write the fields out")  # fmt: skip
        raise SpecError(f"{path} is not valid YAML: {why.replace('<unicode string>', str(path))}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        problem = f"{path} nests lists or mappings thousands deep; a spec has {MAX_DEPTH} levels at most"
        raise SpecError(problem) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError(
            f"{path}: the spec must be a mapping of sections (data, smoothing, ...), got {type(doc).__name__}"
        )
    return doc


# A real spec is 4 levels deep (sweep -> grid -> field -> values); far more is an attack or
# a mistake, and would only reach pydantic and the sweep expansion as unbounded recursion.
MAX_DEPTH = 16


def load_yaml(text: str) -> Any:
    """YAML as a spec reads it (SpecLoader), every problem a YAMLError. PyYAML's constructors
    raise ValueError, KeyError and the like, not a YAMLError, for a value its explicit tag cannot
    take: `!!int 2x`, `!!float 5e-3.`, `!!bool maybe` (KeyError), `!!timestamp 2024-02-30`."""
    try:
        return yaml.load(text, Loader=SpecLoader)
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a value's !!tag cannot read it ({type(e).__name__}: {e}); drop the tag, and quote the "
            "value if it is meant as text",
        ) from None


def check_nesting(doc: Any, source: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH or holding itself through a YAML alias
    (`a: &x [*x]`); shared aliases are measured once, so an alias bomb costs nothing."""
    heights: dict[int, int] = {}
    open_: set[int] = set()

    def height(value: Any, depth: int) -> int:
        if not isinstance(value, (dict, list)):
            return 0
        key = id(value)
        if key in open_:
            raise SpecError(f"{source}: a YAML alias makes the document contain itself; write the values out")
        if key not in heights:
            if depth >= MAX_DEPTH:
                raise SpecError(f"{source}: lists or mappings nested more than {MAX_DEPTH} deep; a spec needs 4")
            open_.add(key)
            children = value.values() if isinstance(value, dict) else value
            heights[key] = 1 + max((height(child, depth + 1) for child in children), default=0)
            open_.discard(key)
        if depth + heights[key] > MAX_DEPTH:
            raise SpecError(f"{source}: lists or mappings nested more than {MAX_DEPTH} deep; a spec needs 4")
        return heights[key]

    height(doc, 0)
