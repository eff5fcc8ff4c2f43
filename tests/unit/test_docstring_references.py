"""Documents the code cites are in the repository (issue 12: no docstring may send a reader to a
file they cannot open)."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SOURCES = [*ROOT.glob("kachery_feeds/**/*.py"), *ROOT.glob("kachery_node/**/*.py"),
           *ROOT.glob("js/src/**/*.js")]
CITED = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")


def test_every_cited_document_exists():
    missing = []
    for source in SOURCES:
        for n, line in enumerate(source.read_text().splitlines(), 1):
            for cited in CITED.findall(line):
                if not (ROOT / cited).exists() and not (ROOT / "spec" / cited).exists():
                    missing.append(f"{source.relative_to(ROOT)}:{n}: {cited}")
    assert SOURCES and not missing, "\n".join(missing)
