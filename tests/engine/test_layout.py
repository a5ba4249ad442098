"""The package map holds: engine serves without torch, and imports point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What each package may import from the others (STYLE.md: matcher -> evaluation -> ingestion -> training, all ->
# engine). No file is exempt: the CLI wiring lives in matcher/, the one package that imports all four.
ALLOWED = {
    "matcher": {"engine", "training", "ingestion", "evaluation"},
    "engine": set(),
    "training": {"engine"},
    "ingestion": {"engine", "training"},
    "evaluation": {"engine", "training", "ingestion"},
}
# engine's rooms (README.md, Layout): the modules at its top (the API, settings, errors, the records and what
# reads and writes them) and one subpackage per role. A new module goes into the subpackage of its role; one
# more at the top, or a new subpackage, is a decision to make here and in the README.
ENGINE_TOP = {
    "__init__", "compatibility", "errors", "feedback", "feedback_blocks", "filters", "likes", "recommend", "redaction",
    "schema",
    "settings", "users",
}  # fmt: skip
ENGINE_PACKAGES = {"learned", "ranking", "reciprocity", "store"}


def test_engine_and_recommend_import_without_torch() -> None:
    code = (
        "import sys, engine, engine.recommend, engine.store, engine.store.edge, engine.store.client, "
        "engine.users, engine.feedback, engine.reciprocity.full, engine.reciprocity.incremental, "
        "engine.learned.rebuild, engine.learned.served; "
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
            bad = _imported_packages(path) - allowed - {package}
            if bad:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not wrong, "\n".join(wrong)


def test_no_package_imports_by_name() -> None:
    """importlib by name would hide an edge from the check above (and a renamed module would vanish silently)."""
    users = [
        str(path.relative_to(ROOT))
        for package in ALLOWED
        for path in sorted((ROOT / package).rglob("*.py"))
        if "importlib.import_module" in path.read_text() or "find_spec(" in path.read_text()
    ]
    assert not users, users


def test_cli_wiring_is_light_and_complete() -> None:
    code = (
        "import sys; from matcher.cli import build_parser; p = build_parser(); "
        "cmds = sorted(p._subparsers._group_actions[0].choices); "
        "print(cmds); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    commands, heavy = out.stdout.strip().splitlines()
    for name in ("recommend", "stats", "delete-user", "ingest", "train", "embed", "simulate", "demo", "serve"):
        assert f"'{name}'" in commands, (name, commands)
    assert heavy == "[]"


def test_engine_keeps_its_rooms() -> None:
    """No module lands at engine/'s top by default, and no folder of modules is left without an ``__init__``."""
    engine = ROOT / "engine"
    top = {path.stem for path in engine.glob("*.py")}
    folders = {path.name for path in engine.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert top == ENGINE_TOP, f"not agreed: {sorted(top - ENGINE_TOP)}; gone: {sorted(ENGINE_TOP - top)}"
    assert folders == ENGINE_PACKAGES, sorted(folders ^ ENGINE_PACKAGES)
    assert all((engine / name / "__init__.py").is_file() for name in ENGINE_PACKAGES)
