"""The named statements of queries.sql, loaded once.

Each block there starts with `-- name: <name>`, then comment lines saying what it does,
then the statement. Keeping every statement in one file, by name, shows what Chainline
asks of Postgres in one place, and lets a reviewer read the SQL as SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

QUERIES_FILE = Path(__file__).with_name("queries.sql")
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    text: str


def parse_queries(source: str) -> dict[str, Query]:
    """The named blocks of a queries file (anything before the first name is a preface)."""
    queries: dict[str, Query] = {}
    headers = list(_HEADER.finditer(source))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following is not None else len(source)
        lines = source[header.end() : end].strip().splitlines()
        leading = next((i for i, line in enumerate(lines) if not line.startswith("--")), 0)
        description, body = lines[:leading], lines[leading:]
        name = header.group(1)
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        text = "\n".join(body).rstrip().rstrip(";")
        queries[name] = Query(name, " ".join(line[2:].strip() for line in description), text)
    return queries


QUERIES = parse_queries(QUERIES_FILE.read_text())
