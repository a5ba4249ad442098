"""The package map holds: engine serves without torch, and imports point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What each package may import from the others (STYLE.md: evaluation -> ingestion -> training, all -> engine).
ALLOWED = {
    "engine": set(),
    "training": {"engine"},
    "ingestion": {"engine", "training"},
    "evaluation": {"engine", "training", "ingestion"},
}


def test_engine_and_recommend_import_without_torch() -> None:
    code = (
        "import sys, engine, engine.recommend, engine.store, engine.store.edge, engine.store.client, "
        "engine.users, engine.commands; "
        "print(sorted(m for m in ('torch', 'transformers', 'training', 'ingestion', 'evaluation') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_imports_point_one_way() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            # The CLI entry reaches the other packages' cli modules by name (importlib), not by import.
            bad = _imported_packages(path) - allowed - {package}
            if bad:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)
