"""The import contracts: the store format is a leaf, featurestore never imports trainer,
and trainer reads stores through featurestore.store and featurestore.errors only.

They are declared in pyproject.toml (``[tool.importlinter]``) and checked by
``lint-imports``; here the contracts are run, shown to name every module they must, and
checked once more at run time, in fresh interpreters, on what an import really loads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAF = {"featurestore", "featurestore.store", "featurestore.errors"}
"""What ``import featurestore.store`` may load of featurestore (the package itself, lazy)."""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return run_python(f"""
        import sys
        from importlinter.cli import lint_imports
        sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))
    """)


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def test_lint_imports_keeps_every_contract() -> None:
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The check is not vacuous: an import the code has, forbidden, breaks the contract."""
    config = tmp_path / "contracts.toml"
    config.write_text(textwrap.dedent("""
        [tool.importlinter]
        root_packages = ["featurestore", "trainer"]

        [[tool.importlinter.contracts]]
        name = "extract without the store (false)"
        type = "forbidden"
        source_modules = ["featurestore.extract"]
        forbidden_modules = ["featurestore.store"]
    """))
    result = lint_imports(config)
    assert result.returncode == 1
    assert "featurestore.extract -> featurestore.store" in result.stdout


def test_the_contracts_are_the_documented_ones() -> None:
    by_name = contracts()
    assert sorted(by_name) == [
        "The store format is a leaf: featurestore.store imports no other featurestore module "
        "than errors",
        "featurestore never imports trainer",
        "trainer reads stores through featurestore.store and featurestore.errors only",
    ]
    assert all(c["type"] == "forbidden" for c in by_name.values())
    reader = by_name["trainer reads stores through featurestore.store and featurestore.errors "
                     "only"]
    assert reader["ignore_imports"] == [  # one exception: the demo's end-to-end job
        "trainer.** -> featurestore.store", "trainer.** -> featurestore.errors",
        "trainer.demo -> featurestore.corpus.demo",
    ]


def loaded_after(statement: str) -> set[str]:
    result = run_python(f"""
        import sys
        {statement}
        print(" ".join(sorted(m for m in sys.modules
                              if m == "featurestore" or m.startswith("featurestore."))))
    """)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_store_loads_no_other_featurestore_module() -> None:
    assert loaded_after("import featurestore.store") == LEAF


@pytest.mark.parametrize("module", ["trainer.data", "trainer.workers"])
def test_trainer_reads_stores_without_the_build_side(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert loaded == LEAF
    assert not loaded & {"featurestore.targets", "featurestore.extract", "featurestore.build"}


def test_the_package_exports_load_on_first_use() -> None:
    assert loaded_after("import featurestore") == {"featurestore"}
    assert "featurestore.build" in loaded_after(
        "import featurestore; featurestore.dask_executor")
    for first in ("import featurestore", "import featurestore.build",
                  "from featurestore.build import partition_hash"):
        result = run_python(f"""
            {first}
            import featurestore, featurestore.build
            from featurestore import build
            print(featurestore.build is build, build.__module__, build.__name__)
        """)
        assert result.stdout == "True featurestore.build build\n", (first, result.stderr)
    result = run_python("import featurestore; featurestore.no_such_name")
    assert "module 'featurestore' has no attribute 'no_such_name'" in result.stderr
