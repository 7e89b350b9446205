"""The `lifecycle` command's start: `--help` builds every sub-command's parser without loading Prefect,
MLflow or a training library (they cost seconds; each command imports what it uses when it runs), and the
cyclic collector main() pauses for the imports is back on however a command ends."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.cli import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "trl", "prefect", "mlflow", "datasets", "lancedb", "sentence_transformers",
         "great_expectations", "sklearn", "fastapi")


def test_building_the_parser_imports_no_heavy_library() -> None:
    code = ("import json, sys\nfrom lifecycle.cli import build_parser\nparser = build_parser()\n"
            f"print(json.dumps([sorted(m for m in {HEAVY!r} if m in sys.modules), "
            "sorted(parser._subparsers._group_actions[0].choices)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded, commands = json.loads(done.stdout)
    assert loaded == []
    assert {"run", "stages", "search", "ask", "serve", "annotate", "models", "promote", "bench"} <= set(commands)


def test_help_answers() -> None:
    done = subprocess.run([sys.executable, "-m", "lifecycle.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "usage: lifecycle" in done.stdout and "run" in done.stdout


def test_the_collector_paused_for_the_imports_is_back_on_however_a_command_ends() -> None:
    """main() pauses Python's cyclic collector while the command's modules load; a caller in the same process
    (these tests, a notebook) has it back after an argument error, a user error and a command that ran."""
    assert gc.isenabled()
    with pytest.raises(SystemExit):
        main(["run", "--until", "no-such-stage"])
    assert gc.isenabled()
    assert main(["config", "--set", "tokenize.vocab_sise=3"]) == 2  # an unknown key: a user error
    assert gc.isenabled()
    assert main(["stages"]) == 0
    assert gc.isenabled()
