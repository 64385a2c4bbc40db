"""``models/`` is the pure domain: the standard library (less IO, clocks and randomness) and
pydantic, nothing else. ``models`` ← ``streams``, never the reverse (STYLE.md, Layout)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "models"

FORBIDDEN_MODULES = frozenset(
    {
        "faust",
        "mode",
        "aiokafka",
        "kafka",
        "openai",
        "sqlalchemy",
        "aiohttp",
        "httpx",
        "requests",
        "os",
        "time",
        "random",
        "secrets",
        "socket",
        "subprocess",
        "asyncio",
        "importlib",
        "streams",
    }
)
THIRD_PARTY_ALLOWED = frozenset({"pydantic", "pydantic_core", "typing_extensions"})
# attribute chains that read the environment, the clock or randomness
FORBIDDEN_CALLS = (
    "os.environ",
    "os.getenv",
    "time.time",
    "time.monotonic",
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
    "date.today",
    "uuid.uuid1",
    "uuid.uuid4",
)
FORBIDDEN_NAMES = frozenset({"__import__", "open", "input", "exec", "eval"})


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def impurities(source: str, filename: str = "<models>") -> list[str]:
    """Every import or use that would make a domain module impure, as ``line: reason``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            # ``from datetime import datetime`` is fine; ``from os import environ`` is not
        for module in modules:
            top = module.split(".")[0]
            if top in FORBIDDEN_MODULES:
                found.append(f"{line}: imports {module}")
            elif not (
                top in sys.stdlib_module_names
                or top in THIRD_PARTY_ALLOWED
                or top in ("models", "__future__")
            ):
                found.append(f"{line}: imports third-party {module}")
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and any(
                dotted == bad or dotted.endswith("." + bad) for bad in FORBIDDEN_CALLS
            ):
                found.append(f"{line}: uses {dotted}")
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"{line}: uses {node.id}")
    return found


MODULES = sorted(MODELS.rglob("*.py"))


def test_the_domain_package_is_where_we_look() -> None:
    names = {path.name for path in MODULES}
    assert {"__init__.py", "events.py", "ledger.py", "lifecycle.py", "usage.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(MODELS.parent)))
def test_domain_modules_are_pure(path: Path) -> None:
    assert impurities(path.read_text(encoding="utf-8"), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import faust",
        "import aiokafka.errors",
        "from openai import AsyncOpenAI",
        "from sqlalchemy.orm import Session",
        "import aiohttp",
        "import httpx",
        "import requests",
        "import os",
        "from os import environ",
        "import os.path",
        "import time",
        "from time import time",
        "import random",
        "from streams.settings import Settings",
        "import numpy",
        "import datetime\nx = datetime.datetime.now()",
        "from datetime import datetime\nx = datetime.now()",
        "from datetime import datetime as dt, date\nx = date.today()",
        "x = __import__('os')",
        "import uuid\nx = uuid.uuid4()",
    ],
)
def test_the_check_catches_impurity(source: str) -> None:
    assert impurities(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "from pydantic import BaseModel",
        "import hashlib, hmac, json, re",
        "from collections.abc import Mapping",
        "from datetime import datetime\nx = datetime.fromtimestamp(0)",
        "from models.lifecycle import State",
        "from . import lifecycle",
        "import uuid\nx = uuid.uuid5(uuid.NAMESPACE_URL, 'a')",
    ],
)
def test_the_check_allows_the_pure_standard_library(source: str) -> None:
    assert impurities(source) == []
