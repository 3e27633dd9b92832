"""The paper's published numbers, as data (study/published_results.yaml), read by the reports
(study/report/published.py) and by `study plan` (study/plan/resolution.py). Apart from both, so the
plan reads them without importing the reports (matplotlib)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

PUBLISHED_FILE = Path(__file__).resolve().parent / "published_results.yaml"


@functools.lru_cache(maxsize=4)
def load_published(path: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(Path(path or PUBLISHED_FILE).read_text())


__all__ = ["PUBLISHED_FILE", "load_published"]
