"""Finding GGUF files: paths, packaged models, and chunked packages joined once into a cache."""

from __future__ import annotations

import hashlib

import pytest

from collabthink.engines import models
from collabthink.engines.models import ModelNotFound, PackagedModel, ensure_model_file, resolve_model

PAYLOAD = [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 10]


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Three installed fake chunk packages (modules + dist-info) holding parts of a GGUF file."""
    site = tmp_path / "site"
    for i, data in enumerate(PAYLOAD, start=1):
        pkg = site / f"fakechunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"fakechunk_part{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakechunk-part{i}\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("COLLABTHINK_CACHE", str(tmp_path / "cache"))
    joined = b"".join(PAYLOAD)
    return PackagedModel(
        name="fake",
        description="fake",
        pip_install="pip install fakechunk-part1==1.0 fakechunk-part2==1.0 fakechunk-part3==1.0",
        modules=("fakechunk_part1", "fakechunk_part2", "fakechunk_part3"),
        files=("data/part01.bin", "data/part02.bin", "data/part03.bin"),
        versions=("1.0",) * 3,
        size=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(),
        licence="test",
    )


def test_chunks_are_joined_once_and_checked(chunk_packages):
    path = ensure_model_file(chunk_packages)
    assert path.read_bytes() == b"".join(PAYLOAD)
    stamp = path.stat().st_mtime_ns
    assert ensure_model_file(chunk_packages) == path
    assert path.stat().st_mtime_ns == stamp  # a second run does not join (or hash) again


def test_a_wrong_checksum_leaves_no_file_behind(chunk_packages):
    bad = PackagedModel(**{**chunk_packages.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelNotFound, match="sha256"):
        ensure_model_file(bad)
    assert not list((models.cache_dir()).glob("*"))


def test_a_chunk_of_another_version_is_refused_with_the_install_command(chunk_packages):
    pinned = PackagedModel(**{**chunk_packages.__dict__, "versions": ("1.0", "2.0", "1.0")})
    with pytest.raises(ModelNotFound, match="fakechunk-part2==2.0.*pip install"):
        ensure_model_file(pinned)


def test_an_uninstalled_packaged_model_names_the_install_command(chunk_packages):
    missing = PackagedModel(**{**chunk_packages.__dict__, "modules": ("no_such_chunk_mod",) * 3})
    with pytest.raises(ModelNotFound, match="pip install"):
        ensure_model_file(missing)


def test_a_missing_path_names_both_fixes(tmp_path):
    with pytest.raises(ModelNotFound, match="--model PATH.*packaged models"):
        resolve_model(tmp_path / "nope.gguf")


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a model")
    with pytest.raises(ModelNotFound, match="not a GGUF"):
        resolve_model(f)


def test_packaged_names_resolve_to_gguf_files():
    path = resolve_model("smollm2-135m")
    assert path.read_bytes()[:4] == b"GGUF"


def test_the_default_model_is_installed_and_resolves():
    # Installed by the project's own dependencies; joined into the cache on first use.
    path = resolve_model(None)
    assert path.stat().st_size == models.PACKAGED_MODELS[models.DEFAULT_MODEL].size
