"""An emitter's cold start loads only what an append needs (issue 14, figure D).

Each check runs a fresh interpreter with ``-S`` and the package on ``PYTHONPATH``: an
editable install's path hook (loaded by ``site``) imports pathlib, re and more itself, which
would hide what ``import spool`` costs a host that installed the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spool

PACKAGE_PARENT = str(Path(spool.__file__).resolve().parent.parent)

# Each costs a cold emitter a millisecond or more, and no append needs it.
HEAVY = (
    "typing",
    "dataclasses",
    "pathlib",
    "re",
    "json",
    "enum",
    "functools",
    "contextlib",
    "collections",
    "urllib.parse",
    "ipaddress",
    "inspect",
    "logging",
    "threading",
    "spool.settings",
    "spool.keys",
    "spool.store._state",
    "spool.store._reading",
    "spool.store._limits",
    "spool.store._quarantine",
    "requests",
    "click",
    "filelock",
    "platformdirs",
)


def _loaded_by(code: str, tmp_path: Path, **extra: str) -> set[str]:
    """The modules a fresh ``python -S`` holds after ``code``, less those it started with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RS_", "DO_NOT", "DISABLE"))}
    env.update(PYTHONPATH=PACKAGE_PARENT, RS_TELEMETRY_DIR=str(tmp_path / "spool"), **extra)
    script = (
        f"import sys\nbefore = set(sys.modules)\n{code}\nafter = set(sys.modules)\n"
        "import json\nprint(json.dumps(sorted(after - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return set(loaded)


@pytest.mark.parametrize(
    "code",
    [
        "import spool",
        "import spool; assert spool.append('server_start', {'db_backend': 'postgres'})",
        "import spool; assert spool.Session(user_id='k').append('adapter_stop')",
    ],
)
def test_an_emitter_loads_none_of_the_heavy_modules(code: str, tmp_path: Path) -> None:
    loaded = _loaded_by(code, tmp_path)
    assert sorted(loaded & set(HEAVY)) == []
    assert (tmp_path / "spool").is_dir() or code == "import spool"


def test_an_append_that_seals_a_segment_stays_lean(tmp_path: Path) -> None:
    """A rotation loads the cap's code (once per process), never the flush's or the CLI's."""
    code = (
        "import spool\n"
        "for _ in range(40):\n"
        "    assert spool.append('server_start', {'db_backend': 'postgres'})"
    )
    loaded = _loaded_by(code, tmp_path, RS_TELEMETRY_MAX_BYTES="4000")
    assert any(p.name.startswith("seg-") for p in (tmp_path / "spool").iterdir())
    assert "spool.store._limits" in loaded
    assert sorted(loaded & {"spool.settings", "requests", "click", "filelock", "logging"}) == []


def test_every_public_name_still_works_lazily(tmp_path: Path) -> None:
    """``spool.flush`` and ``flush_on_exit`` load their code on use; ``__all__`` is whole."""
    code = (
        "import spool\n"
        "names = {n: getattr(spool, n) for n in spool.__all__}\n"
        "assert callable(names['flush']) and callable(names['flush_on_exit'])\n"
        "assert issubclass(spool.InvalidEvent, ValueError)\n"
        "from spool import store\n"
        "assert callable(store.load_state) and store.ACTIVE == 'active.jsonl'"
    )
    loaded = _loaded_by(code, tmp_path)
    assert "spool.store._state" in loaded  # loaded on first use of a name, not before
    assert "requests" not in loaded
