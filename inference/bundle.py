"""The self-describing model bundle: a directory with a manifest and checksummed files.

Layout::

    manifest.json          format version, model config, thresholds, library versions,
                           creation time, git revision, sha256 of every file, metrics
    vision.onnx            the exported vision tower (one file)
    vision.int8.onnx       optional: the same, dynamically int8-quantised for CPU hosts
    vision.safetensors     the same weights for the torch path (training, verification)
    tokenizer/             the LLM tokenizer
    llm_config/            optional: the LLM's own config, when the base directory holds a
                           whole multimodal model (its weights are then read with the
                           manifest's key mapping)
    llm/                   the base LLM (Hugging Face directory) -- or a reference to an
                           external base model directory, checksummed the same way
    adapters/<name>/       one peft LoRA adapter per trained stage (report, instruct, ...)
    lookup_ngrams.json     optional: n-gram table of the report targets, for speculative
                           decoding (:mod:`inference.speculative`)

Loading verifies the manifest and every checksum, and names the file on any mismatch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from os import PathLike
from pathlib import Path
from typing import Any

from inference.config import ModelConfig
from inference.errors import BundleError, BundleIntegrityError, ConfigError

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "cxr-vlm-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VISION_ONNX = "vision.onnx"
VISION_ONNX_INT8 = "vision.int8.onnx"
VISION_WEIGHTS = "vision.safetensors"
TOKENIZER_DIR = "tokenizer"
LLM_DIR = "llm"
LLM_CONFIG_DIR = "llm_config"
ADAPTERS_DIR = "adapters"
LOOKUP_TABLE = "lookup_ngrams.json"

_VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "pydicom",
    "cxr-dicom-node",
)


@dataclass(frozen=True)
class Provenance:
    """Where a bundle's model comes from, and what it may be used for.

    Written to the manifest and, by the node, into every SR the model drafts (TID 4019
    Algorithm Parameters), so a reader of the report sees it.

    Parameters
    ----------
    source
        The model's origin: a published model (``"ChantalMP/RaDialog v1"``) or the recipe
        that trained it.
    licence
        The licence string of the weights, as their publisher states it.
    intended_use
        The publisher's intended-use notice (``"Research use only"``; a demonstration
        model says it is one).
    source_version
        The published version or revision, when there is one.
    """

    source: str
    licence: str
    intended_use: str
    source_version: str = ""

    def __post_init__(self) -> None:
        for key in ("source", "licence", "intended_use"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"provenance.{key} must be a non-empty string")
        if not isinstance(self.source_version, str):
            raise ConfigError("provenance.source_version must be a string")

    def to_dict(self) -> dict[str, str]:
        """The manifest's ``provenance`` object."""
        return {
            "source": self.source,
            "source_version": self.source_version,
            "licence": self.licence,
            "intended_use": self.intended_use,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        """Read the manifest's ``provenance`` object.

        Raises
        ------
        ConfigError
            For a missing or unknown key, or a value that is not a string (named).
        """
        known = {"source", "source_version", "licence", "intended_use"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"provenance: unknown key(s) {unknown}")
        missing = sorted({"source", "licence", "intended_use"} - set(data))
        if missing:
            raise ConfigError(f"provenance: missing key(s) {missing}")
        return cls(
            source=data["source"],
            licence=data["licence"],
            intended_use=data["intended_use"],
            source_version=data.get("source_version", ""),
        )


@dataclass
class Manifest:
    """Parsed ``manifest.json`` of a bundle."""

    root: Path
    config: ModelConfig
    thresholds: dict[str, float]
    llm_base: Path
    tokenizer: Path
    adapters: dict[str, Path]
    tasks: dict[str, str | None]
    files: dict[str, str]
    external_files: dict[str, str] = field(default_factory=dict)
    name: str = "unnamed"
    version: str = "0"
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    git_revision: str | None = None
    exporter: str = ""
    #: Where the model comes from; ``None`` for bundles written before provenance was kept.
    provenance: Provenance | None = None
    #: The LLM's own config directory, when ``llm_base`` holds a multimodal checkpoint.
    llm_config: Path | None = None
    #: Regex -> replacement of the base checkpoint's weight names (``from_pretrained``'s
    #: ``key_mapping``), for a language model inside a multimodal checkpoint.
    llm_key_mapping: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def vision_onnx(self) -> Path:
        """Path of the ONNX vision tower."""
        return self.root / VISION_ONNX

    @property
    def vision_onnx_int8(self) -> Path | None:
        """Path of the int8 ONNX vision tower, or ``None`` when the bundle has none."""
        name = self.raw.get("vision", {}).get("onnx_int8")
        return self.root / name if name else None

    @property
    def vision_weights(self) -> Path:
        """Path of the torch vision weights."""
        return self.root / VISION_WEIGHTS

    @property
    def content_check(self) -> Path | None:
        """Path of the content check (:mod:`inference.content_check`), or ``None``."""
        name = self.raw.get("vision", {}).get("content_check")
        return self.root / name if name else None

    @property
    def lookup_table(self) -> Path | None:
        """Path of the n-gram table for lookup decoding, or ``None`` when the bundle has none."""
        name = self.raw.get("llm", {}).get("lookup_table")
        return self.root / name if name else None


def attach_file(root: str | PathLike[str], name: str, section: str, key: str) -> None:
    """Record a file written into a bundle after packaging: its checksum, and its name
    under ``manifest[section][key]`` (the manifest itself is not checksummed)."""
    bundle = Path(root)
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.setdefault(section, {})[key] = name
    manifest["files"][name] = sha256_file(bundle / name)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a bundle's behaviour (installed ones only)."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision() -> str | None:
    """Git revision of this source tree, or ``None`` outside a checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _checksums(root: Path, relative_to: Path) -> dict[str, str]:
    return {
        str(path.relative_to(relative_to)): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def write_manifest(
    root: str | PathLike[str],
    *,
    config: ModelConfig,
    thresholds: Mapping[str, float],
    adapters: Mapping[str, str],
    tasks: Mapping[str, str | None],
    llm_base: str | PathLike[str] = LLM_DIR,
    name: str = "unnamed",
    version: str = "0",
    exporter: str = "",
    metrics: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
    llm_key_mapping: Mapping[str, str] | None = None,
) -> Path:
    """Write ``manifest.json`` over the files already in ``root`` and return its path.

    Parameters
    ----------
    root
        Bundle directory holding ``vision.onnx`` (and optionally ``vision.int8.onnx``),
        ``vision.safetensors``, ``tokenizer/``,
        ``adapters/``, optionally ``lookup_ngrams.json`` and, unless ``llm_base`` points
        elsewhere, ``llm/``.
    config, thresholds
        Model config and one decision threshold per classifier label.
    adapters
        Adapter name -> directory relative to ``root``.
    tasks
        Task (``report``, ``chat``) -> adapter name used for it (``None`` = base model).
    llm_base
        ``llm`` (inside the bundle) or an absolute path to an external base model
        directory, whose files are checksummed too.
    name, version, exporter, metrics
        Provenance recorded as given.
    provenance
        Source, licence and intended use of the model (recommended for every new bundle).
    llm_key_mapping
        Weight-name mapping for a language model read out of a multimodal checkpoint
        (with ``llm_config/`` in the bundle).
    """
    bundle = Path(root)
    labels = config.classifier.labels
    missing = [label for label in labels if label not in thresholds]
    if missing:
        raise ConfigError(f"thresholds missing for labels {missing}")
    for task, adapter in tasks.items():
        if adapter is not None and adapter not in adapters:
            raise ConfigError(f"task {task!r} uses adapter {adapter!r}, which is not in the bundle")
    base = Path(llm_base)
    external = base.is_absolute()
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": library_versions(),
        "config": config.to_dict(),
        "thresholds": {label: float(thresholds[label]) for label in labels},
        "vision": {
            "onnx": VISION_ONNX,
            "onnx_int8": VISION_ONNX_INT8 if (bundle / VISION_ONNX_INT8).is_file() else None,
            "weights": VISION_WEIGHTS,
            "exporter": exporter,
        },
        "llm": {
            "base": str(base),
            "tokenizer": TOKENIZER_DIR,
            "adapters": dict(adapters),
            "tasks": dict(tasks),
            "lookup_table": LOOKUP_TABLE if (bundle / LOOKUP_TABLE).is_file() else None,
            "config": LLM_CONFIG_DIR if (bundle / LLM_CONFIG_DIR).is_dir() else None,
            "key_mapping": dict(llm_key_mapping or {}),
        },
        "metrics": dict(metrics) if metrics is not None else None,
        "provenance": provenance.to_dict() if provenance is not None else None,
        "files": {
            path: digest
            for path, digest in _checksums(bundle, bundle).items()
            if path != MANIFEST_NAME
        },
        "external_files": (
            {str(base / rel): digest for rel, digest in _checksums(base, base).items()}
            if external
            else {}
        ),
    }
    path = bundle / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def load_manifest(root: str | PathLike[str], *, verify: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with ``verify`` also check every file's sha256.

    Raises
    ------
    BundleError
        For a missing bundle or manifest, an unknown format or version, a bad config, or a
        file listed in the manifest that is missing.
    BundleIntegrityError
        For a file whose checksum differs from the manifest, or a file in the bundle that
        the manifest does not list; the message names the file.
    """
    bundle = Path(root)
    manifest_path = bundle / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: no manifest; is {bundle} a model bundle?")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not a {BUNDLE_FORMAT} manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format version {raw.get('format_version')!r} is not supported "
            f"(this software reads version {FORMAT_VERSION})"
        )
    try:
        config = ModelConfig.from_dict(raw["config"])
        llm = raw["llm"]
        thresholds = {str(k): float(v) for k, v in raw["thresholds"].items()}
        files = dict(raw["files"])
        external_files = dict(raw.get("external_files") or {})
        provenance = (
            Provenance.from_dict(raw["provenance"]) if raw.get("provenance") is not None
            else None
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise BundleError(f"{manifest_path}: invalid manifest ({exc})") from exc
    missing_thresholds = [label for label in config.classifier.labels if label not in thresholds]
    if missing_thresholds:
        raise BundleError(f"{manifest_path}: thresholds missing for {missing_thresholds}")
    base = Path(llm["base"])
    manifest = Manifest(
        root=bundle,
        config=config,
        thresholds=thresholds,
        llm_base=base if base.is_absolute() else bundle / base,
        tokenizer=bundle / llm["tokenizer"],
        adapters={name: bundle / rel for name, rel in llm.get("adapters", {}).items()},
        tasks=dict(llm.get("tasks", {})),
        files=files,
        external_files=external_files,
        name=str(raw.get("name", "unnamed")),
        version=str(raw.get("version", "0")),
        created=str(raw.get("created", "")),
        versions=dict(raw.get("versions", {})),
        metrics=raw.get("metrics"),
        git_revision=raw.get("git_revision"),
        exporter=str(raw.get("vision", {}).get("exporter", "")),
        provenance=provenance,
        llm_config=bundle / llm["config"] if llm.get("config") else None,
        llm_key_mapping={str(k): str(v) for k, v in (llm.get("key_mapping") or {}).items()},
        raw=raw,
    )
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Check every file of the bundle (and of an external base model) against its sha256.

    Raises
    ------
    BundleError, BundleIntegrityError
        Naming the first missing, unlisted or modified file.
    """
    root = manifest.root
    for rel, expected in sorted(manifest.files.items()):
        _check_file(root / rel, expected)
    for absolute, expected in sorted(manifest.external_files.items()):
        _check_file(Path(absolute), expected)
    listed = set(manifest.files) | {MANIFEST_NAME}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and rel not in listed:
            raise BundleIntegrityError(f"{path}: file is not listed in the bundle manifest")


def _check_file(path: Path, expected: str) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: file listed in the bundle manifest is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise BundleIntegrityError(
            f"{path}: checksum mismatch (manifest sha256 {expected[:12]}..., file {actual[:12]}...)"
        )


def copy_tree(source: str | PathLike[str], destination: Path) -> None:
    """Copy a directory into the bundle (used for tokenizer, base model and adapters)."""
    shutil.copytree(Path(source), destination, dirs_exist_ok=False)


__all__ = [
    "Provenance",
    "ADAPTERS_DIR",
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "LLM_DIR",
    "LOOKUP_TABLE",
    "attach_file",
    "MANIFEST_NAME",
    "Manifest",
    "TOKENIZER_DIR",
    "VISION_ONNX",
    "VISION_ONNX_INT8",
    "VISION_WEIGHTS",
    "copy_tree",
    "git_revision",
    "library_versions",
    "load_manifest",
    "sha256_file",
    "verify_files",
    "write_manifest",
]
