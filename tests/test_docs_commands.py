"""The Korean quickstart and the model card name commands, flags and files that exist: every ``matcher``
command line in their shell blocks parses with the real parser, and every repository path they cite is there."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from matcher.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["docs/README.ko.md", "docs/model_card.md", "docs/sagemaker.md"]


def matcher_lines(text: str) -> list[str]:
    """Each ``matcher ...`` command in the ```bash blocks, continuation lines joined, env prefixes dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            words = shlex.split(line) if line else []
            while words and re.match(r"^[A-Z_]+=", words[0]):
                words = words[1:]
            if words and words[0] == "matcher":
                out.append(shlex.join(words[1:]))
    return out


def test_the_quickstart_has_the_commands_a_newcomer_needs() -> None:
    lines = matcher_lines((ROOT / "docs/README.ko.md").read_text(encoding="utf-8"))
    words = {w for line in lines for w in shlex.split(line)}
    assert {"recommend", "serve", "ingest", "train", "--compare-store"} <= words, lines


@pytest.mark.parametrize("doc", DOCS)
def test_every_matcher_line_parses(doc: str) -> None:
    parser = build_parser()
    for line in matcher_lines((ROOT / doc).read_text(encoding="utf-8")):
        try:
            parser.parse_args(shlex.split(line))
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"{doc}: 'matcher {line}' does not parse (exit {exc.code})")


@pytest.mark.parametrize("doc", DOCS)
def test_cited_repository_files_exist(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    cited = set(
        re.findall(r"`((?:docs|tests|training|engine|evaluation|ingestion|matcher|bench|deploy)/[\w./-]+)", text)
    )
    cited |= {f"docs/{m}" for m in re.findall(r"\]\(((?:[\w-]+)\.md)\)", text)}
    assert cited, doc
    for path in cited:
        file = path.split("::")[0]
        assert (ROOT / file).exists(), f"{doc} cites {file}, which is not in the repository"


def test_the_model_card_cites_privacy_tests_that_exist() -> None:
    text = (ROOT / "docs/model_card.md").read_text(encoding="utf-8")
    for ref in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text):
        source = (ROOT / ref[0]).read_text(encoding="utf-8")
        assert f"def {ref[1]}(" in source, ref
    assert "delete-user" in text and "no photo bytes" in text.lower()
