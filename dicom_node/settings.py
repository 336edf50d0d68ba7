"""Typed settings of the DICOM node.

Sources, later ones winning: defaults, a TOML config file (``--config FILE`` or
``DICOM_NODE_CONFIG``), ``DICOM_NODE_*`` environment variables (sections joined with ``__``,
e.g. ``DICOM_NODE_INFERENCE__DEVICE=cuda``), then command-line flags. Unknown keys are
refused, and every error names the offending key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from inference import OrtOptions, RuntimeOptions

from .errors import SettingsError

CONFIG_ENV = "DICOM_NODE_CONFIG"


class InferenceSettings(BaseModel):
    """Where the model bundle is and how it runs."""

    model_config = ConfigDict(extra="forbid")

    bundle: Path = Field(
        default=Path("models/tiny"),
        description="Model bundle directory used by infer and the worker.",
    )
    vision_backend: Literal["onnx", "torch"] = Field(
        default="onnx", description="Vision runtime: ONNX Runtime (production) or torch."
    )
    vision_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="ONNX vision model: int8, fp32, or auto (int8 on CPU when the bundle "
        "has it, fp32 on CUDA).",
    )
    device: str = Field(default="auto", description="LLM device: auto, cpu, cuda, cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="LLM dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    ort_providers: list[str] = Field(
        default_factory=list,
        description="ONNX Runtime providers; empty = CUDAExecutionProvider when present, else CPU.",
    )
    ort_intra_op_threads: int = Field(
        default=0, ge=0, description="ORT intra-op threads (0 = auto)."
    )
    ort_inter_op_threads: int = Field(
        default=0, ge=0, description="ORT inter-op threads (0 = auto)."
    )
    verify_checksums: bool = Field(default=True, description="Check bundle sha256 sums on load.")

    def runtime_options(self) -> RuntimeOptions:
        """The :class:`inference.RuntimeOptions` these settings describe."""
        return RuntimeOptions(
            vision_backend=self.vision_backend,
            vision_precision=self.vision_precision,
            ort=OrtOptions(
                providers=tuple(self.ort_providers),
                intra_op_threads=self.ort_intra_op_threads,
                inter_op_threads=self.ort_inter_op_threads,
            ),
            device=self.device,
            dtype=self.dtype,
            verify_checksums=self.verify_checksums,
        )


class Settings(BaseSettings):
    """All settings of the node, one section per concern."""

    model_config = SettingsConfigDict(
        env_prefix="DICOM_NODE_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Log level of the command line and services."
    )
    inference: InferenceSettings = Field(default_factory=InferenceSettings)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{key}: {item['msg']}")
    return f"invalid settings ({source}): " + "; ".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from defaults, a TOML file, the environment and explicit overrides.

    Parameters
    ----------
    config_file
        TOML file; defaults to ``$DICOM_NODE_CONFIG`` when set.
    **overrides
        Values from command-line flags (nested sections as dicts); ``None`` values are
        ignored so that unset flags do not mask other sources.

    Raises
    ------
    SettingsError
        For an unreadable file or any invalid or unknown key (the message names it).
    """
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    clean = _drop_none(overrides)
    try:
        loaded = _Sourced(**clean)
    except ValidationError as exc:
        raise SettingsError(
            _format_errors(exc, str(path) if path else "environment/flags")
        ) from exc
    return Settings.model_validate(loaded.model_dump())


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                cleaned[key] = nested
        elif value is not None:
            cleaned[key] = value
    return cleaned


__all__ = ["CONFIG_ENV", "InferenceSettings", "Settings", "load_settings"]
