"""A spec's text read safely: the file (size, encoding), the YAML (a loader without what a hostile
file would use) and the plain values it may hold; every refusal is a SpecError naming the file
and, where YAML knows it, the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from study.spec.limits import MAX_DEPTH, MAX_INT, MAX_SPEC_BYTES


class _Refused(Exception):
    """Raised inside the YAML loader; parse_yaml turns it into a SpecError with the file's name."""


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader without what a spec never needs and a hostile file would use: aliases
    (a billion-laughs bomb expands a few hundred bytes into gigabytes), duplicate keys (YAML keeps
    the last one silently), nesting deeper than MAX_DEPTH, and tags for sets, binary and ordered
    pairs (SafeLoader already refuses !!python/... tags)."""

    yaml_constructors = {
        tag: fn
        for tag, fn in yaml.SafeLoader.yaml_constructors.items()
        if tag not in ("tag:yaml.org,2002:binary", "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs")
    }

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"line {event.start_mark.line + 1}: the YAML alias *{event.anchor} is not allowed: "
                "a spec may not use anchors and aliases (&name / *name); write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels, which is not allowed")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: SafeLoader reports it
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _Refused(
                        f"line {line}: duplicate key {key!r} (first at line {first}) is not allowed: "
                        "YAML would keep only the last value; give each key once"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str = "spec") -> Any:
    """The plain value of a YAML document, through SpecLoader; raises SpecError naming the line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: larger than {MAX_SPEC_BYTES} bytes (1 MiB), which is not allowed for a spec")
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except _Refused as exc:
        raise SpecError(f"{where}, {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        problem = exc.problem or ""
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        tag = re.search(r"tag '([^']+)'", problem)
        if tag:
            shown = tag[1].replace("tag:yaml.org,2002:", "!!")
            raise SpecError(
                f"{where}, {line}the YAML tag {shown} is not allowed: a spec holds plain mappings, lists, "
                "strings, numbers, true/false and null"
            ) from None
        raise SpecError(f"{where}, {line}not valid YAML: {problem}") from None
    except yaml.MarkedYAMLError as exc:
        line = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: " if exc.problem_mark else ""
        raise SpecError(f"{where}, {line}not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SpecError(f"{where}: nested too deeply, which is not allowed") from None


def read_spec_file(path: Path) -> str:
    """A spec file's text: at most MAX_SPEC_BYTES of UTF-8, else a SpecError saying what it is."""
    where = str(path)
    try:
        if not path.is_file():
            raise SpecError(f"spec file {where!r} " + ("is not a regular file" if path.exists() else "does not exist"))
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"spec file {where!r} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {where!r} is larger than {MAX_SPEC_BYTES} bytes (1 MiB), which is not allowed for a spec")
    nul = data.find(b"\0")
    if nul >= 0:
        raise SpecError(f"spec file {where!r} is a binary file (a NUL byte at offset {nul}), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"spec file {where!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def check_plain(value: Any, where: str = "", depth: int = 0) -> None:
    """Refuses what no spec field takes and what would fail only when stored: nesting deeper than
    MAX_DEPTH, integers beyond 64 bits, NUL characters in strings (PostgreSQL refuses them)."""
    if depth > MAX_DEPTH:
        raise SpecError(f"{where or 'spec'}: nested deeper than {MAX_DEPTH} levels, which is not allowed")
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if isinstance(k, str):
                check_plain(k, path, depth + 1)
            check_plain(v, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise SpecError(f"{where or 'spec'}={value!r} is not allowed: integers must fit in 64 bits (|x| < 2**63)")
    elif isinstance(value, str) and "\0" in value:
        raise SpecError(f"{where or 'spec'}={value!r} is not allowed: a NUL character in a string")


def read_source(source: str | Path | dict[str, Any]) -> tuple[Any, str]:
    """The raw value of a spec given as a YAML path, YAML text or a mapping, and where it came from
    (the file's name, or "spec"), for messages. Raises SpecError for a file or text that is no
    YAML mapping."""
    where = "spec"
    if isinstance(source, dict):
        return source, where
    text = str(source)
    # A one-line string without ':' cannot be a spec's YAML: it names a file.
    if isinstance(source, Path) or ("\n" not in text and (":" not in text or Path(text).exists())):
        path = Path(text)
        where = str(path)
        text = read_spec_file(path)
    raw = parse_yaml(text, where)
    if raw is None:
        raise SpecError(f"{where}: the spec is empty; a spec is a YAML mapping of fields (name, task, search, ...)")
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a spec is a YAML mapping of fields, got {type(raw).__name__}")
    return raw, where
