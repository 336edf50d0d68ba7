"""A real Orthanc for the end-to-end tests: the PACS (auto-forwarding) and the RIS (worklists).

Orthanc 1.10 listens on 0.0.0.0 with no option to change it; it runs with the loopback
``bind()`` shim preloaded (see ``bind_loopback.c``) and Nagle off, as ../shared/PEERS.md
says. Each instance gets its own folder and free ports, and is stopped by the fixture.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

from support.peers import free_port, stop_process, wait_for_port

#: Orthanc's AE title in the tests.
ORTHANC_AE = "ORTHANC"
#: Plugin folder of Debian's orthanc package.
PLUGINS = Path("/usr/share/orthanc/plugins")
#: Forward every stored instance except SRs (and except what Lua itself stored).
AUTOFORWARD_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] ~= 'SR' and origin['RequestOrigin'] ~= 'Lua' then
    SendToModality(instanceId, 'node')
  end
end
"""


@dataclass
class Orthanc:
    """One Orthanc process.

    Parameters
    ----------
    folder
        Storage, index, worklists and configuration go here.
    env
        Environment of the process (the loopback preload, ``TCP_NODELAY=1``).
    node
        ``(ae_title, host, port)`` of the node to auto-forward to; None = no forwarding.
    """

    folder: Path
    env: dict[str, str]
    node: tuple[str, str, int] | None = None
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def http(self) -> httpx.Client:
        """One HTTP client for every REST call: a client per call would build a TLS context
        each time (about a core's worth of CPU when polling every 20 ms, which slowed the
        node measured beside it in bench/e2e.py)."""
        if self._client is None:
            self._client = httpx.Client()
        return self._client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ae_title(self) -> str:
        return ORTHANC_AE

    @property
    def worklists(self) -> Path:
        return self.folder / "worklists"

    def config(self) -> dict[str, Any]:
        plugins = [str(PLUGINS / "libModalityWorklists.so")]
        gdcm = PLUGINS / "libOrthancGdcm.so"
        if gdcm.exists():
            plugins.append(str(gdcm))
        config: dict[str, Any] = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": ORTHANC_AE,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowFindWorklist": True,
            "UnknownSopClassAccepted": True,
            "Plugins": plugins,
            "Worklists": {"Enable": True, "Database": str(self.worklists)},
            "DicomModalities": {},
            "StableAge": 1,
        }
        if self.node is not None:
            config["DicomModalities"]["node"] = list(self.node)
            script = self.folder / "autoforward.lua"
            script.write_text(AUTOFORWARD_LUA)
            config["LuaScripts"] = [str(script)]
        return config

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.worklists.mkdir(exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        self.process = subprocess.Popen(
            ["Orthanc", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "orthanc.log").open("wb"),
            env=self.env,
        )
        wait_for_port(self.dicom_port, self.process, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ REST
    def upload(self, dataset_or_path: Dataset | Path) -> str:
        """Store an instance through the REST API (Lua forwards it); returns its Orthanc id."""
        if isinstance(dataset_or_path, Path):
            body = dataset_or_path.read_bytes()
        else:
            buffer = BytesIO()
            dataset_or_path.save_as(buffer, enforce_file_format=True)
            body = buffer.getvalue()
        response = self.http.post(f"{self.url}/instances", content=body, timeout=30)
        response.raise_for_status()
        return str(response.json()["ID"])

    def find(self, level: str = "Instance", **query: str) -> list[str]:
        response = self.http.post(
            f"{self.url}/tools/find", json={"Level": level, "Query": query}, timeout=10
        )
        response.raise_for_status()
        return [str(item) for item in response.json()]

    def instance(self, orthanc_id: str) -> Dataset:
        response = self.http.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        response.raise_for_status()
        return pydicom.dcmread(BytesIO(response.content))

    def srs(self) -> list[Dataset]:
        return [self.instance(item) for item in self.find(Modality="SR")]

    def srs_of_study(self, study_uid: str) -> list[Dataset]:
        """The SR instances of a study, oldest content first."""
        found = [
            self.instance(item)
            for item in self.find(StudyInstanceUID=study_uid, Modality="SR")
        ]
        return sorted(found, key=lambda ds: (str(ds.ContentDate), str(ds.ContentTime)))

    def wait_for_srs(self, study_uid: str, count: int, timeout: float = 30.0) -> list[Dataset]:
        """Poll until the study holds `count` SRs (or `timeout` passes); returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.srs_of_study(study_uid)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)  # polling interval, not a synchronisation delay

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """Orthanc's MainDicomTags of every series of a study."""
        response = self.http.post(
            f"{self.url}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=30,
        )
        response.raise_for_status()
        return [series["MainDicomTags"] for series in response.json()]

    def add_worklist_item(self, name: str, item: Dataset) -> Path:
        """Put a worklist file (``*.wl``) where the worklist plugin reads it."""
        self.worklists.mkdir(parents=True, exist_ok=True)
        path = self.worklists / f"{name}.wl"
        item.save_as(path, enforce_file_format=True)
        return path


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
