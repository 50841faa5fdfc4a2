"""The reproducible build of the HSM application: the same sources give the same digest
whatever the file times, permissions, umask, process or directory order; one changed
byte changes it; the tree is refused, never rewritten, when it cannot be measured
faithfully; and everything the node process imports of ours is measured."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmvault.evidence import measurement
from hsmvault.evidence.measurement import (
    ARCHIVE_MTIME,
    MANIFEST_NAME,
    MEASURED_DISTRIBUTIONS,
    MEASURED_SOURCES,
    MeasurementError,
    build_archive,
    build_archive_bytes,
    default_source_root,
    installed_dependencies,
    main,
    measure,
)
from tests.evidence.import_closure import is_measured, loaded_hsmvault_files

DEPS = dict.fromkeys(MEASURED_DISTRIBUTIONS, "1.0")


def _measured_entries(root: Path) -> Iterator[tuple[Path, Path]]:
    for entry in MEASURED_SOURCES:
        yield root / entry, Path(entry)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the measured sources (only those), as a checkout would have them."""
    root = tmp_path / "src"
    for source, relative in _measured_entries(default_source_root()):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, target)
    return root


def test_two_builds_give_the_same_digest() -> None:
    first, second = measure(dependencies=DEPS), measure(dependencies=DEPS)
    assert first == second
    assert len(first.sha256) == 64
    assert first.digest == bytes.fromhex(first.sha256)


def test_digest_is_the_sha256_of_the_archive_file(tmp_path: Path) -> None:
    out = tmp_path / "hsm-app.tar"
    result = build_archive(out, dependencies=DEPS)
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.sha256
    assert len(data) == result.size


def test_copy_with_shuffled_mtimes_modes_umask_and_listing_order_measures_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = measure(dependencies=DEPS)
    rng = random.Random(1234)
    old_umask = os.umask(0o077)
    try:
        root = tmp_path / "elsewhere" / "src"
        for source, relative in reversed(list(_measured_entries(default_source_root()))):
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(source, target)
    finally:
        os.umask(old_umask)
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(rng.choice([0o600, 0o644, 0o755, 0o444]))
            stamp = rng.randrange(0, 2_000_000_000)
            os.utime(path, (stamp, stamp))

    def shuffled(path: str) -> list[str]:
        names = os.listdir(path)
        rng.shuffle(names)
        return names

    monkeypatch.setattr(measurement, "_list_dir", shuffled)
    copied = measure(root, dependencies=DEPS)
    assert copied == original
    monkeypatch.setattr(
        measurement, "_list_dir", lambda path: sorted(os.listdir(path), reverse=True)
    )
    assert measure(root, dependencies=DEPS) == original


def test_another_process_with_another_umask_and_locale_measures_the_same(tree: Path) -> None:
    expected = measure(tree).sha256
    env = dict(os.environ, TZ="Pacific/Kiritimati", LANG="C", LC_ALL="C", PYTHONHASHSEED="77")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o027); from hsmvault.evidence.measurement import main; "
            "sys.exit(main(sys.argv[1:]))",
            "--source-root",
            str(tree),
            "--expect",
            expected,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(expected)


def test_one_changed_source_byte_changes_the_digest(tree: Path) -> None:
    before = measure(tree, dependencies=DEPS)
    target = tree / "hsmvault/hsm/vault_state.py"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    after = measure(tree, dependencies=DEPS)
    assert after.sha256 != before.sha256
    assert after.files == before.files


def test_a_new_source_file_changes_the_digest(tree: Path) -> None:
    before = measure(tree, dependencies=DEPS)
    (tree / "hsmvault/crypto/extra.py").write_text("X = 1\n", encoding="utf-8")
    after = measure(tree, dependencies=DEPS)
    assert after.sha256 != before.sha256
    assert "hsmvault/crypto/extra.py" in after.files


def test_unmeasured_code_does_not_change_the_digest(tree: Path) -> None:
    before = measure(tree, dependencies=DEPS)
    host = tree / "hsmvault/host"
    host.mkdir()
    (host / "gateway.py").write_text("X = 1\n", encoding="utf-8")
    (tree / "hsmvault/hsm/__pycache__").mkdir()
    (tree / "hsmvault/hsm/__pycache__/vault_state.cpython-311.pyc").write_bytes(b"\x00" * 16)
    assert measure(tree, dependencies=DEPS) == before


def test_a_dependency_version_changes_the_digest(tree: Path) -> None:
    before = measure(tree, dependencies=DEPS)
    after = measure(tree, dependencies={**DEPS, "cryptography": "1.1"})
    assert after.sha256 != before.sha256


def test_dependencies_default_to_the_installed_versions() -> None:
    installed = installed_dependencies()
    assert set(installed) == set(MEASURED_DISTRIBUTIONS)
    assert measure().dependencies == tuple(sorted(installed.items()))


@pytest.mark.parametrize("deps", [{}, {**DEPS, "requests": "2.0"}, {**DEPS, "pysodium": "1 0"}])
def test_wrong_dependency_lists_refused(tree: Path, deps: dict[str, str]) -> None:
    with pytest.raises(MeasurementError):
        measure(tree, dependencies=deps)


def test_uninstalled_measured_distribution_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measurement, "MEASURED_DISTRIBUTIONS", ("no-such-distribution-h6",))
    with pytest.raises(MeasurementError, match="not installed"):
        installed_dependencies()


# -- refusals: never rewrite ----------------------------------------------------------


def test_crlf_source_refused_and_left_untouched(tree: Path) -> None:
    target = tree / "hsmvault/wire/encoding.py"
    crlf = target.read_bytes().replace(b"\n", b"\r\n")
    target.write_bytes(crlf)
    with pytest.raises(MeasurementError, match="carriage return"):
        measure(tree, dependencies=DEPS)
    assert target.read_bytes() == crlf


def test_non_utf8_source_refused(tree: Path) -> None:
    (tree / "hsmvault/fleet/latin1.py").write_bytes(b"# caf\xe9\n")
    with pytest.raises(MeasurementError, match="UTF-8"):
        measure(tree, dependencies=DEPS)


@pytest.mark.parametrize("name", ["notes.txt", ".vault_state.py.swp", "data.json"])
def test_unexpected_file_in_a_measured_package_refused(tree: Path, name: str) -> None:
    (tree / "hsmvault/hsm" / name).write_bytes(b"x")
    with pytest.raises(MeasurementError, match="unexpected file"):
        measure(tree, dependencies=DEPS)


def test_symlinked_source_refused(tree: Path) -> None:
    (tree / "hsmvault/hsm/alias.py").symlink_to(tree / "hsmvault/hsm/vault_state.py")
    with pytest.raises(MeasurementError):
        measure(tree, dependencies=DEPS)


def test_symlinked_single_file_refused(tree: Path) -> None:
    target = tree / "hsmvault/errors.py"
    moved = tree / "errors-real.py"
    target.rename(moved)
    target.symlink_to(moved)
    with pytest.raises(MeasurementError, match="regular file"):
        measure(tree, dependencies=DEPS)


@pytest.mark.parametrize("missing", ["hsmvault/wire", "hsmvault/errors.py"])
def test_missing_measured_source_refused(tree: Path, missing: str) -> None:
    path = tree / missing
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    with pytest.raises(MeasurementError, match="missing"):
        measure(tree, dependencies=DEPS)


# -- the archive itself ----------------------------------------------------------------


def test_archive_members_are_normalised_and_sorted() -> None:
    data, result = build_archive_bytes(dependencies=DEPS)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        members = archive.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: n.encode("ascii"))
        assert tuple(names) == result.files
        assert names[0] == MANIFEST_NAME
        for member in members:
            assert member.isreg()
            assert member.mtime == ARCHIVE_MTIME
            assert member.mode == 0o644
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        manifest = archive.extractfile(MANIFEST_NAME)
        assert manifest is not None
        assert manifest.read().decode("ascii") == (
            "hsmvault HSM application measurement v1\n"
            + "".join(f"{name}==1.0\n" for name in sorted(MEASURED_DISTRIBUTIONS))
        )
    assert "hsmvault/hsm/vault_state.py" in names
    assert "hsmvault/evidence/attestation/software_vendor.py" in names
    assert not any(
        n.startswith(("hsmvault/host/", "hsmvault/client/", "hsmvault/cli/")) for n in names
    )
    assert not any("__pycache__" in n for n in names)


def test_gnu_tar_extracts_exactly_the_sources(tmp_path: Path) -> None:
    """Anyone can check the archive with standard tools: it lists and extracts with GNU
    tar (which must be installed) into byte-identical copies of the sources."""
    out = tmp_path / "hsm-app.tar"
    result = build_archive(out, dependencies=DEPS)
    listing = subprocess.run(
        ["tar", "-tf", str(out)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert tuple(listing) == result.files
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(extract)], check=True)
    source_root = default_source_root()
    for name in result.files:
        if name != MANIFEST_NAME:
            assert (extract / name).read_bytes() == (source_root / name).read_bytes(), name


# -- what runs inside is measured --------------------------------------------------------


def test_node_process_import_closure_is_measured() -> None:
    """Every module of ours that a node process (software or PKCS#11 custody) loads,
    including the ceremony's in-node attestation statement, is in the measured set."""
    files = loaded_hsmvault_files(
        "hsmvault.hsm.node_process",
        "hsmvault.hsm.custody.pkcs11",
        "hsmvault.hsm.softhsm",
        "hsmvault.evidence.attestation.software_vendor",
        "hsmvault.evidence.measurement",
    )
    assert "hsmvault/hsm/node_process.py" in files
    unmeasured = [f for f in files if not is_measured(f)]
    assert unmeasured == []


def test_measured_entries_exist_and_are_unique() -> None:
    assert len(set(MEASURED_SOURCES)) == len(MEASURED_SOURCES)
    root = default_source_root()
    for entry in MEASURED_SOURCES:
        assert (root / entry).exists(), entry


# -- the command line ------------------------------------------------------------------


def test_cli_expect_match_and_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = measure().sha256
    assert main(["--expect", digest.upper()]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["--expect", "00" * 32]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    out = tmp_path / "a.tar"
    assert main(["--archive", str(out), "--list"]) == 0
    printed = capsys.readouterr().out
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert MANIFEST_NAME in printed


def test_cli_reports_an_unmeasurable_tree(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "hsmvault/hsm/stray.txt").write_text("x", encoding="utf-8")
    assert main(["--source-root", str(tree)]) == 2
    assert "unexpected file" in capsys.readouterr().err
