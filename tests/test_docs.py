"""docs/ stands alone: no file outside the repository cited, and the schema page lists every column
of the results database's tables."""

from __future__ import annotations

import re

from conftest import REPO


def test_docs_cite_no_file_outside_the_repository():
    for page in sorted((REPO / "docs").glob("*.md")):
        text = page.read_text()
        assert "design.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#]+)", text):  # relative links resolve inside the repo
            if "://" not in target:
                resolved = (page.parent / target).resolve()
                assert resolved.is_relative_to(REPO) and resolved.exists(), (page.name, target)


def test_the_schema_page_lists_every_column():
    from study.record import results

    text = (REPO / "docs" / "results-db.md").read_text()
    for model in (results.StudyRow, results.TrialRow, results.MetricPointRow):
        table = model.__table__
        section = text.split(f"## {table.name}\n", 1)[1].split("\n## ", 1)[0]
        documented = {name.strip() for row in re.findall(r"^\| ([^|]+) \|", section, re.M) for name in row.split(",")}
        missing = [c.name for c in table.columns if c.name not in documented]
        assert missing == [], (table.name, missing)
