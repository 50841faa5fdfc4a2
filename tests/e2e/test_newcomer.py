"""A newcomer's first ten minutes: a fresh clone, the README's demo command, then a
backup and a restore with that clone's own CLI — through the real witness: the clone's
``up`` publishes the fleet keys, its CLI pins the witness and operator keys at first use
and verifies the fleet's validation bundle in every session, and ``hsmvault audit``
verifies the log.

The clone is of this checkout's HEAD (``git clone`` into a temporary directory; set
``HSMVAULT_NEWCOMER_REPO`` to clone another repository, e.g. a throw-away commit of a
working tree). ``make demo`` really runs: it creates the clone's ``.venv`` and
``pip install -e .`` s the clone into it. To keep CI time sane the ``.venv`` is created
beforehand with this interpreter's installed packages visible through a ``.pth`` file,
so pip finds the dependencies already satisfied instead of downloading them; the clone
itself is built and installed by ``make`` as on any fresh machine.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import UpProcess, deployment_env, tree_digest

pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
PIN = "246810"


def _source_repo() -> Path:
    return Path(os.environ.get("HSMVAULT_NEWCOMER_REPO", str(REPO_ROOT)))


def _base_python() -> str:
    return str(getattr(sys, "_base_executable", sys.executable))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _source_repo()
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.fail("git and make are needed for the newcomer test (make test installs them)")
    inside = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        check=False,
    )
    if inside.returncode != 0:
        pytest.fail(f"{source} is not a git checkout: the newcomer test clones it")
    target = tmp_path_factory.mktemp("newcomer") / "hsmvault"
    subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", f"file://{source}", str(target)],
        check=True,
        timeout=120,
    )
    # The .venv `make` would create, with this interpreter's packages visible (see the
    # module docstring); `make` still installs the clone itself into it.
    subprocess.run([_base_python(), "-m", "venv", str(target / ".venv")], check=True, timeout=120)
    purelib = subprocess.run(
        [
            str(target / ".venv" / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    # Processed after the clone's own editable-install .pth (names sort), so the
    # clone's src/ comes first on sys.path.
    (Path(purelib) / "zz-shared-site-packages.pth").write_text("\n".join(shared) + "\n")
    return target


def _make_env(clone: Path, data_dir: Path) -> dict[str, str]:
    env = deployment_env(data_dir)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO_ROOT))
    )
    return env


@pytest.fixture(scope="module")
def demo_run(
    clone: Path, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    data_dir = tmp_path_factory.mktemp("newcomer-home") / "data"
    return subprocess.run(
        ["make", "demo", "DEMO_ARGS=--size-mib 1"],
        cwd=clone,
        env=_make_env(clone, data_dir),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def test_readme_names_the_demo_command(clone: Path) -> None:
    readme = (clone / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme


def test_make_demo_on_a_fresh_clone_succeeds(
    clone: Path, demo_run: subprocess.CompletedProcess[str]
) -> None:
    assert demo_run.returncode == 0, demo_run.stdout[-4000:] + demo_run.stderr[-4000:]
    assert "demo complete" in demo_run.stdout
    assert "identical" in demo_run.stdout
    assert "LOCKED OUT" in demo_run.stdout
    assert "fleet keys published as epoch 1" in demo_run.stdout  # the real witness ran
    # the clone's own code ran, installed by make into the clone's .venv
    where = subprocess.run(
        [
            str(clone / ".venv" / "bin" / "python"),
            "-c",
            "import hsmvault; print(hsmvault.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(clone / "src")), where
    assert (clone / ".venv" / "bin" / "hsmvault").exists()


@pytest.fixture
def clone_up(
    clone: Path, demo_run: subprocess.CompletedProcess[str], tmp_path: Path
) -> Iterator[UpProcess]:
    if demo_run.returncode != 0:
        pytest.fail(
            "make demo failed on the fresh clone (see test_make_demo_on_a_fresh_clone_succeeds)"
        )
    up = UpProcess([str(clone / ".venv" / "bin" / "hsmvault")], tmp_path / "data", cwd=clone)
    up.start()
    try:
        yield up
    finally:
        up.stop()


def test_backup_and_restore_with_the_clones_cli(clone_up: UpProcess, tmp_path: Path) -> None:
    source = tmp_path / "my-files"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "letter.txt").write_text("dear newcomer\n" * 100)
    (source / "photo.bin").write_bytes(os.urandom(300_000))
    run = clone_up.cli
    assert clone_up.ready["witness"]["epoch"] == 1
    first = run("secret", "set", "--pin", "--secret-stdin", stdin=PIN + "\n")
    assert first.code == 0, first.stderr
    assert "pinned at first use" in first.stdout + first.stderr
    assert run("backup", "create", str(source), "--id", "first").code == 0
    new_phone = tmp_path / "new-phone"
    recovered = run(
        "secret", "recover", "--pin", "--secret-stdin", stdin=PIN + "\n", device=new_phone
    )
    assert recovered.code == 0, recovered.stderr
    restored = run("backup", "restore", "first", str(tmp_path / "restored"), device=new_phone)
    assert restored.code == 0, restored.stderr
    assert tree_digest(tmp_path / "restored") == tree_digest(source)
    audit = run("audit", "log", "--json")
    assert audit.code == 0, audit.stdout + audit.stderr
    assert [e["epoch"] for e in audit.json()["epochs"]] == [1]
