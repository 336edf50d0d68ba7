"""Write ``deploy/config.example.toml`` from the settings models: every key with its meaning.

Usage::

    python deploy/make_example_config.py            # rewrite deploy/config.example.toml
    python deploy/make_example_config.py --check    # exit 1 when the file is out of date

Every key of :class:`dicom_node.settings.Settings` is written with a comment: its
description, the allowed values, the default and the environment variable. Keys with a
default are written as they are (the file validates as it is and changes nothing); keys
without one (``database.url``, ``tls.cert``, ...) and the optional sections (``[ris]``,
``[pacs.<name>]``, ``[calling_aes.<AE>]``, ``[api.users.<name>]``) are written commented
out, with an example value. A line ending in ``# alternative`` is an alternative to the key
above it (give one of them).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dicom_node.settings import Settings

#: The file this script writes.
EXAMPLE = Path(__file__).resolve().parent / "config.example.toml"
#: Width of the comment lines.
WIDTH = 96
#: Environment variable prefix and section separator (see dicom_node.settings).
ENV_PREFIX = "DICOM_NODE_"
#: Names used for the entries of mapping sections in the example.
MAPPING_EXAMPLES = {"calling_aes": "ORTHANC", "pacs": "main", "api.users": "reader1"}
#: Example values of keys that have no default (or whose default is empty).
EXAMPLES: dict[str, Any] = {
    "calling_aes.destinations": ["main"],
    "pacs.ae_title": "PACS",
    "pacs.host": "pacs.example.org",
    "pacs.port": 104,
    "ris.ae_title": "RIS",
    "ris.host": "ris.example.org",
    "ris.port": 104,
    "ris.station_ae_title": "CXRROOM1",
    "storage.spool": "/var/lib/dicom_node/spool",
    "storage.outbox": "/var/lib/dicom_node/outbox",
    "storage.reports": "/var/lib/dicom_node/reports",
    "database.url": "postgresql+psycopg://dicom_node:PASSWORD@db.example.org/dicom_node",
    "broker.url": "redis://redis.example.org:6379/0",
    "broker.result_backend": "redis://redis.example.org:6379/1",
    "worker.metrics_port": 9101,
    "tls.cert": "/etc/dicom_node/tls/node.crt",
    "tls.key": "/etc/dicom_node/tls/node.key",
    "tls.ca": "/etc/dicom_node/tls/ca.crt",
    "api.users.token_sha256": "0" * 64,
    "api.users.token": "a-long-random-development-token",
    "api.users.display_name": "Doe^Jane",
    "api.users.organization": "Example Hospital",
    "api.cors_origins": ["https://viewer.example.org"],
    "retrain.base_reports": "/data/mimic-cxr-reports",
    "retrain.work_dir": "/var/lib/dicom_node/retrain",
    "retrain.registry_dir": "/var/lib/dicom_node/models",
    "inference.ort_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
#: Keys written as an alternative to the key before them (not uncommented by tests).
ALTERNATIVES = {"api.users.token"}


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool, bool]:
    """(model, optional, mapping) of a field annotation: a section, ``X | None``, dict[str, X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        inner = args[1]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, False, True
    if args and type(None) in args:
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg, True, False
    return None, False, False


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def toml_value(value: Any) -> str:
    """A Python value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = value.as_posix()
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _choices(annotation: Any) -> list[str]:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return [str(arg) for arg in typing.get_args(candidate)]
    return []


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _env_name(path: str) -> str | None:
    """The environment variable of a key (None inside mapping sections, set as one JSON)."""
    if any(part.startswith("<") for part in path.split(".")):
        return None
    return ENV_PREFIX + "__".join(part.upper() for part in path.split("."))


def _mapping_env(path: str) -> str:
    """How a mapping section is set from the environment (one JSON value)."""
    return f"Environment: {_env_name(path)} as one JSON object."


def _key_lines(key: str, field: FieldInfo, path: str, example_path: str,
               commented: bool) -> list[str]:
    default = _default(field)
    required = default is PydanticUndefined
    text = field.description or ""
    choices = _choices(field.annotation)
    if choices:
        text += f" One of: {', '.join(choices)}."
    if not required:
        shown = "not set" if default is None else toml_value(default)
        text += f" Default: {shown}."
    else:
        text += " Required in this section."
    env = _env_name(path)
    if env is not None:
        text += f" Environment: {env}."
    lines = _comment(text.strip())
    empty = default is None or default == {} or (default == [] and example_path in EXAMPLES)
    if required or empty or example_path in ALTERNATIVES:
        value = EXAMPLES.get(example_path)
        if value is None and not required and default is not None:
            value = default
        if value is None:
            raise KeyError(f"no example value for {example_path}; add one to EXAMPLES")
        suffix = "  # alternative" if example_path in ALTERNATIVES else ""
        lines.append(f"# {key} = {toml_value(value)}{suffix}")
    else:
        lines.append(f"{'# ' if commented else ''}{key} = {toml_value(default)}")
    return lines


def _section(model: type[BaseModel], table: str, path: str, example_path: str,
             commented: bool) -> list[str]:
    """Lines of one table: its keys, then its nested tables."""
    lines = [""] + _comment((model.__doc__ or table).strip().splitlines()[0])
    lines.append(f"{'# ' if commented else ''}[{table}]")
    nested: list[str] = []
    for name, field in model.model_fields.items():
        sub, optional, mapping = _model_of(field.annotation)
        key_path, key_example = f"{path}.{name}", f"{example_path}.{name}"
        if sub is not None and mapping:
            entry = MAPPING_EXAMPLES[key_example]
            nested += [""] + _comment(f"{key_path}: {field.description} {_mapping_env(key_path)}")
            nested += _section(sub, f"{table}.{name}.{entry}", f"{key_path}.<name>", key_example,
                               True)
        elif sub is not None:
            nested += _section(sub, f"{table}.{name}", key_path, key_example,
                               commented or optional)
        else:
            lines += _key_lines(name, field, key_path, key_example, commented)
    return lines + nested


def render() -> str:
    """The example configuration, as text."""
    lines = [
        "# Example configuration of the DICOM node: every key, with its meaning and default.",
        "# Generated by deploy/make_example_config.py from dicom_node/settings.py; do not edit.",
        "# Copy it, change what your site needs, and check it with",
        "#   dicom_node config check config.toml",
        "# Sources, later ones winning: defaults, this file (--config or DICOM_NODE_CONFIG),",
        "# DICOM_NODE_<SECTION>__<KEY> environment variables, command-line flags.",
        "# Lines starting with '# key =' are optional keys or sections: remove the '# ' to set",
        "# them. A line ending in '# alternative' replaces the key above it.",
        "",
    ]
    tables: list[str] = []
    for name, field in Settings.model_fields.items():
        sub, optional, mapping = _model_of(field.annotation)
        if sub is None:
            lines += _key_lines(name, field, name, name, False)
        elif mapping:
            entry = MAPPING_EXAMPLES[name]
            tables += [""] + _comment(f"{name}: {field.description} {_mapping_env(name)}")
            tables += _section(sub, f"{name}.{entry}", f"{name}.<name>", name, True)
        else:
            if optional:
                tables += [""] + _comment(f"{name}: {field.description}")
            tables += _section(sub, name, name, name, optional)
    text = "\n".join(lines + tables)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the example (or, with --check, compare it); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if the file is stale.")
    parser.add_argument("--out", type=Path, default=EXAMPLE, help="File to write.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; run python deploy/make_example_config.py",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
