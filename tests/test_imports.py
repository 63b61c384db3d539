"""The packages import in one direction: the order below, which is the order data flows through them.

contract/ (the graph contract, chunk protocol, bundle format, hashing, sizes, ONNX Runtime sessions)
and video/ (video input/output and resizing) are leaves: they import no stage. Then the stages:
swiftvr -> export -> calibration -> engines -> runtime. A module may import its own package and
packages before it, never one after it: so there is no cycle, and a stage never reaches into a later
one. Imports inside functions count too (a lazy import is still a dependency).
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORDER = ("contract", "video", "swiftvr", "export", "calibration", "engines", "runtime")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package of this repository, line) for every import in the file, relative ones resolved."""
    package = path.relative_to(REPO).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ORDER:
                found.add((top, node.lineno))
    return found


def violations() -> list[str]:
    rank = {name: i for i, name in enumerate(ORDER)}
    bad = []
    for package in ORDER:
        for path in sorted((REPO / package).rglob("*.py")):
            for top, line in sorted(imported_packages(path)):
                if rank[top] > rank[package]:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {top} (a later package than {package})")
    return bad


def test_packages_import_only_earlier_packages():
    assert violations() == []


def test_the_check_sees_a_backward_import(tmp_path, monkeypatch):
    # The rule must catch a lazy import of a later stage written inside a function.
    for package in ORDER:
        (tmp_path / package).mkdir()
    (tmp_path / "export" / "bad.py").write_text("def f():\n    from runtime.load import load_bundle\n")
    (tmp_path / "runtime" / "good.py").write_text("from export import export_model\nfrom . import load\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert violations() == ["export/bad.py:2 imports runtime (a later package than export)"]


def test_every_package_of_the_repository_is_in_the_order():
    # A new top-level package must take its place in the order, or it would escape the rule.
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(ORDER)
