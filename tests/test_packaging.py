"""Packaging and layering: the wheel installs under the gristmill name; the core never imports textual."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLESS = ["gristmill.db", "gristmill.db.reviews", "gristmill.db.exports", "gristmill.models",
            "gristmill.models.llama_cpp_engine", "gristmill.app.ingest", "gristmill.app.prompts",
            "gristmill.app.generate", "gristmill.app.scheduler", "gristmill.app.review", "gristmill.app.export",
            "gristmill.app.cli", "gristmill.app.export_formats", "gristmill.db.training",
            "gristmill.app.browse", "gristmill.app.stats", "gristmill.app.generate_session", "gristmill.db.browse",
            "gristmill.db.stats_detail", "gristmill.db.samples"]


@pytest.mark.parametrize("module", HEADLESS)
def test_headless_modules_never_import_textual(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] == 'textual']; print(bad)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_models_and_db_do_not_import_each_other_or_the_app():
    for package, forbidden in (("models", ("gristmill.db", "gristmill.app", "textual", "sqlite")),
                               ("db", ("gristmill.models", "gristmill.app", "textual", "llama_cpp"))):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for name in forbidden:
                assert f"import {name}" not in text and f"from {name}" not in text, f"{path} imports {name}"


def test_the_app_screens_reach_storage_only_through_the_pipeline():
    """app/tui calls app/ (the same functions as the CLI), never gristmill.db or SQL directly."""
    for path in (ROOT / "app" / "tui").rglob("*.py"):
        text = path.read_text()
        for forbidden in ("gristmill.db", "import sqlite3", "sqlite_utils", ".execute(", "store.query("):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


def test_llama_cpp_is_imported_only_when_its_engine_is_used():
    code = "import sys, gristmill.models, gristmill.app.generate; print('llama_cpp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("gristmill-*.whl"))
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # the runtime dependencies come from the test environment's site-packages (no network needed)
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = {p.name for p in site.iterdir()}
    assert "gristmill" in installed and not {"app", "models", "db"} & installed
    help_text = subprocess.run([env_dir / "bin" / "gristmill", "--help"], capture_output=True, text=True,
                               cwd=tmp_path, check=True).stdout
    assert "generate" in help_text and "export" in help_text and "review" in help_text
    location = subprocess.check_output([python, "-c", "import gristmill.app.cli as c; print(c.__file__)"],
                                       text=True, cwd=tmp_path)
    assert location.startswith(str(site))
    data = subprocess.check_output([python, "-c", "from gristmill.app.prompts import load_style; "
                                    "print(len(load_style('few-shot').examples))"], text=True, cwd=tmp_path)
    assert int(data) >= 30
