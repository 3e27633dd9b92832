"""Pydantic's validation errors as the one-line messages the command line prints: the field, the
value and what is allowed (pydantic's own text names neither the value nor the field's path the
way a spec's author writes it)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> str:
    """Turns pydantic's errors into 'field=value is not allowed: rule' lines; ``root``: the model
    validated (the allowed fields of an unknown one are read from it)."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).endswith("Param") and p not in _TAGS]
        key = ".".join(loc) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see docs/study-specs.md"
            msg = f"unknown field {key!r} (value {value!r}); allowed fields: {allowed}"
        elif err["type"] == "missing":
            msg = f"{key} is required"
        elif err["type"] in ("literal_error", "union_tag_invalid"):
            msg = f"{key}={_tag_value(err)!r} is not allowed: {err['msg']}"
        elif err["type"] == "value_error" and "is not allowed" in msg:
            # "name='x' is not allowed" at name, "step=0 ..." at search.lr: one dotted field name.
            head = re.match(r"[A-Za-z_][\w\[\]]*(?==)", msg)
            if loc and head and head[0] == loc[-1]:
                msg = ".".join(loc[:-1] + [msg]) if len(loc) > 1 else msg
            elif loc and head:
                msg = f"{key}.{msg}"
            elif loc:
                msg = f"{key}: {msg}"
        else:
            msg = f"{key}={value!r} is not allowed: {msg}"
        lines.append(msg)
    return "; ".join(lines)


_TAGS = {"float", "int", "categorical", "grid"}


def _tag_value(err: dict[str, Any]) -> Any:
    ctx = err.get("ctx") or {}
    return ctx.get("tag", err.get("input"))


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model
