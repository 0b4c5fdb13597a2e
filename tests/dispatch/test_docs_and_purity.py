"""The committed lifecycle docs match the tables, and dispatch/ stays pure (stdlib and geo only)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from dispatch import docs_gen

ROOT = Path(__file__).resolve().parents[2]
DISPATCH = ROOT / "dispatch"


def test_committed_lifecycles_doc_is_up_to_date():
    committed = (ROOT / "docs" / "lifecycles.md").read_text(encoding="utf-8")
    assert committed == docs_gen.render(), "run: python -m dispatch.docs_gen > docs/lifecycles.md"


def test_docs_gen_check_mode(tmp_path, capsys):
    good = tmp_path / "good.md"
    good.write_text(docs_gen.render(), encoding="utf-8")
    stale = tmp_path / "stale.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert docs_gen.main(["--check", str(good)]) == 0
    assert docs_gen.main(["--check", str(stale)]) == 1
    assert docs_gen.main(["--bogus"]) == 2
    assert docs_gen.main([]) == 0
    assert "stateDiagram-v2" in capsys.readouterr().out


def test_diagrams_name_every_state():
    text = docs_gen.render()
    for state in ("pending", "at_hospital", "timed_out", "recommended", "off_duty"):
        assert f"| `{state}` |" in text


# Anything that would bring I/O, clocks or randomness into the domain core.
FORBIDDEN = {"asyncio", "aiohttp", "asyncpg", "icp", "random", "socket", "time", "threading", "sqlite3"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dispatch_imports_only_stdlib_and_geo():
    for path in sorted(DISPATCH.glob("*.py")):
        names = _imports(path)
        assert not names & FORBIDDEN, f"{path.name} imports {names & FORBIDDEN}"
        outside = {n for n in names if n not in sys.stdlib_module_names and n not in {"dispatch", "geo"}}
        assert not outside, f"{path.name} imports {outside}"


def test_dispatch_never_reads_the_clock():
    for path in sorted(DISPATCH.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for call in ("datetime.now(", "datetime.utcnow(", "date.today(", "time.time("):
            assert call not in text, f"{path.name} calls {call}"


def test_every_module_starts_with_a_docstring():
    for path in sorted(DISPATCH.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, f"{path.name} has no module docstring"
