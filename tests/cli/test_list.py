"""`robustdistill list`: full first sentences, from a static index that matches the real registries, without torch."""

from __future__ import annotations

import subprocess
import sys

from robustdistill import catalog


def test_index_matches_the_registries() -> None:
    # Fails when an attack, probe, trainer or architecture is added, renamed or re-documented without
    # `python -m robustdistill.catalog` (which rewrites robustdistill/catalog_index.py).
    assert catalog.load_index() == catalog.collect(), "run `python -m robustdistill.catalog` and commit the index"


def test_first_sentence() -> None:
    doc = """Pre-activation ResNet-18 (He et al. 2016b), RobustBench names;
        ``bn_before_fc=False`` gives kuangliu's. A second sentence.

        Details."""
    assert catalog.first_sentence(doc) == "Pre-activation ResNet-18 (He et al. 2016b), RobustBench names; `bn_before_fc=False` gives kuangliu's."
    assert catalog.first_sentence("Checks (Athalye et al. 2018), each a flag:\n\n- one\n- two") == "Checks (Athalye et al. 2018), each a flag."
    assert catalog.first_sentence("Pad to e.g. 3,32,32 input. Then more.") == "Pad to e.g. 3,32,32 input."
    assert catalog.first_sentence("Version 2.5 of it. More.") == "Version 2.5 of it."
    assert catalog.first_sentence(None) == ""


def _run_list(*args: str) -> subprocess.CompletedProcess[str]:
    # In a fresh interpreter: this test process has torch loaded already. COLUMNS fixes the wrapping width.
    code = ("import sys; from robustdistill.cli import main; code = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'list loaded torch'; sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, "list", *args], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "100"})


def _parse(listing: str) -> dict[str, list[tuple[str, str]]]:
    """The printed listing back as {family: [(name, description)]}, wrapped lines joined."""
    parsed: dict[str, list[tuple[str, str]]] = {}
    indent = " " * (2 + catalog.NAME_WIDTH + 1)
    for line in listing.splitlines():
        if not line.startswith(" "):
            family = parsed.setdefault(line.rstrip(":"), [])
        elif line.startswith(indent):
            name, text = family[-1]
            family[-1] = (name, f"{text} {line.strip()}")
        else:
            family.append((line[2:2 + catalog.NAME_WIDTH].strip(), line[len(indent):]))
    return parsed


def test_list_prints_whole_sentences_without_loading_torch() -> None:
    done = _run_list()
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 100 for line in done.stdout.splitlines())
    index = catalog.collect()
    assert _parse(done.stdout) == index
    for family, entries in index.items():
        for name, description in entries:
            assert description.endswith((".", ")")), f"{family} {name}: {description!r} is cut off"


def test_list_one_family() -> None:
    done = _run_list("trainers")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("trainers:\n") and "attacks:" not in done.stdout
    assert "  pgd-at " in done.stdout
