"""Settings of the node: sources and their precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.errors import SettingsError
from dicom_node.settings import load_settings

runner = CliRunner()

TOML = """
[node]
ae_title = "FROMFILE"
port = 104
stable_seconds = 5

[calling_aes.ORTHANC]
destinations = ["main"]

[calling_aes.MODALITY1]

[pacs.main]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242

[pacs.archive]
ae_title = "ARCHIVE"
host = "pacs.example.org"
port = 11112

[ris]
ae_title = "RIS"
host = "127.0.0.1"
port = 11113
poll_interval_s = 30

[storage]
folder = "/srv/cxr"
min_free_bytes = 1000

[broker]
url = "redis://127.0.0.1:6379/0"

[worker]
concurrency = 2
"""

YAML = """
node:
  ae_title: FROMYAML
  port: 105
calling_aes:
  ORTHANC: {}
storage:
  folder: /srv/yaml
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.node.ae_title == "CXRNODE" and settings.node.bind_address == "127.0.0.1"
    assert settings.calling_aes == {} and settings.pacs == {} and settings.ris is None
    assert settings.storage.spool_dir == Path("var/dicom_node/spool")
    assert settings.database_url == "sqlite:///var/dicom_node/node.db"
    assert settings.broker.url is None and settings.worker.concurrency == 1
    assert not settings.tls.enabled


def test_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(TOML)
    monkeypatch.setenv("DICOM_NODE_NODE__PORT", "2104")
    monkeypatch.setenv("DICOM_NODE_NODE__AE_TITLE", "FROMENV")
    monkeypatch.setenv("DICOM_NODE_WORKER__CONCURRENCY", "3")
    settings = load_settings(config, node={"ae_title": "FROMFLAG", "port": None})
    assert settings.node.ae_title == "FROMFLAG"  # flag beats environment
    assert settings.node.port == 2104  # environment beats file; an unset flag masks nothing
    assert settings.node.stable_seconds == 5  # file beats default
    assert settings.worker.concurrency == 3
    assert settings.storage.spool_dir == Path("/srv/cxr/spool")
    assert settings.database_url == "sqlite:////srv/cxr/node.db"
    assert settings.ris is not None and settings.ris.modalities == ["CR", "DX"]
    assert settings.destinations_for("ORTHANC") == ["main"]
    assert settings.destinations_for("MODALITY1") == ["archive", "main"]


def test_yaml_file_and_a_json_mapping_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(YAML)
    settings = load_settings(config)
    assert (settings.node.ae_title, settings.node.port) == ("FROMYAML", 105)
    assert list(settings.calling_aes) == ["ORTHANC"]
    # Environment variable names are case-insensitive: mappings keyed by AE title come as JSON.
    monkeypatch.setenv("DICOM_NODE_CALLING_AES", '{"Modality1": {}, "ORTHANC": {}}')
    assert sorted(load_settings(config).calling_aes) == ["Modality1", "ORTHANC"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\naetitle = 'X'\n", "node.aetitle"),
        ("[node]\nae_title = 'MUCH_TOO_LONG_AE_TITLE'\n", "node.ae_title"),
        ("[node]\nbind_address = 'localhost'\n", "node.bind_address"),
        ("[node]\nmax_pdu = 100\n", "node.max_pdu"),
        ("[calling_aes.ORTHANC]\ndestinations = ['nowhere']\n", "calling_aes.ORTHANC.destinations"),
        ("[pacs.main]\nae_title = 'P'\nhost = 'h'\n", "pacs.main.port"),
        ("[ris]\nae_title = 'RIS'\nhost = 'h'\nport = 1\npoll_interval_s = 0\n",
         "ris.poll_interval_s"),
        ("[storage]\nmin_free_bytes = -1\n", "storage.min_free_bytes"),
        ("[database]\nurl = 'mysql://db'\n", "database.url"),
        ("[broker]\nurl = 'kafka://x'\n", "broker.url"),
        ("[worker]\nconcurrency = 0\n", "worker.concurrency"),
        ("[tls]\nenabled = true\n", "tls.cert"),
        ("[tls]\nenabled = true\ncert = '/nonexistent.pem'\nkey = '/nonexistent.key'\n",
         "tls.cert"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        load_settings(config)


def test_environment_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_NODE__PORT", "70000")
    with pytest.raises(SettingsError, match=r"node\.port"):
        load_settings()


def test_tls_files_are_checked_when_enabled(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    settings = load_settings(None, tls={"enabled": True, "cert": cert, "key": key})
    assert settings.tls.cert == cert
    with pytest.raises(SettingsError, match=r"tls\.ca"):
        load_settings(None, tls={"enabled": True, "cert": cert, "key": key,
                                 "require_client_cert": True})


def test_config_check_names_a_bad_key_in_a_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node:\n  port: 104\n  colour: blue\n")
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "node.colour" in result.output
    config.write_text("node: [unclosed\n")
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "not valid YAML" in result.output
