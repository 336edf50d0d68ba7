"""Fixtures of the node tests: real DICOM peers, a node on a free port, both databases.

* ``dcmtk``: paths of DCMTK's ``echoscu``/``storescu`` (pynetdicom installs Python scripts of
  the same names, which come first on PATH: the fixture picks the DCMTK binaries).
* ``start_node``: starts the C-STORE SCP in-process on 127.0.0.1, port 0 (the OS picks a free
  one), with a tmp spool and a SQLite database; every node is stopped at teardown.
* ``database``: an empty node database on SQLite and, in a second run, on the local
  PostgreSQL, in a throwaway database created for the test session and dropped after it.
* ``scu_store``: sends a data set or file with pynetdicom's SCU and returns the status.
* ``loopback_preload``: environment of DCMTK servers (which listen on 0.0.0.0) that keeps
  them on 127.0.0.1: ``LD_PRELOAD`` of a bind() shim built from ``bind_loopback.c``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from nodehelpers import SCU_AE, RunningNode, node_settings
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from support.peers import build_bind_shim, find_dcmtk

from dicom_node.dicom.scp import StoreSCP
from dicom_node.store import Database
from dicom_node.store.spool import Spool


# --------------------------------------------------------------------------- DCMTK
@pytest.fixture(scope="session")
def dcmtk() -> dict[str, str]:
    """Paths of DCMTK's echoscu, storescu, storescp, wlmscpfs and dump2dcm (fails, naming the
    package, when missing)."""
    tools = {}
    for name in ("echoscu", "storescu", "storescp", "wlmscpfs", "dump2dcm"):
        path = find_dcmtk(name)
        if path is None:
            pytest.fail(
                f"DCMTK's {name} is not installed; apt-get install dcmtk", pytrace=False
            )
        tools[name] = path
    return tools


@pytest.fixture(scope="session")
def dcmtk_env() -> dict[str, str]:
    """Environment of DCMTK processes: Nagle off (40 ms per message otherwise)."""
    return dict(os.environ, TCP_NODELAY="1")


@pytest.fixture(scope="session")
def loopback_preload(
    tmp_path_factory: pytest.TempPathFactory, dcmtk_env: dict[str, str]
) -> dict[str, str]:
    """Environment of a DCMTK server that must listen on 127.0.0.1 only.

    DCMTK 3.6.7 servers bind 0.0.0.0 and have no option to change it (PEERS.md); the shim
    ``bind_loopback.c``, compiled here once per session and preloaded, turns a wildcard
    bind() into a loopback one. Nagle is off as in ``dcmtk_env``.
    """
    try:
        library = build_bind_shim(tmp_path_factory.mktemp("shim"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return dict(dcmtk_env, LD_PRELOAD=str(library))


# --------------------------------------------------------------------------- test data
@pytest.fixture(scope="session")
def rg1_uncr() -> Path:
    """RG1_UNCR.dcm: a real chest PA CR (pydicom-data), explicit VR little endian."""
    return Path(str(get_testdata_file("RG1_UNCR.dcm")))


@pytest.fixture(scope="session")
def rg1_j2kr() -> Path:
    """RG1_J2KR.dcm: the same image, JPEG 2000 lossless."""
    return Path(str(get_testdata_file("RG1_J2KR.dcm")))


@pytest.fixture(scope="session")
def cr_header(rg1_uncr: Path) -> Dataset:
    """The chest CR's header with a small 32 x 32 gradient in place of its pixels (cheap to
    send; the node refuses a radiograph without pixel data); deep-copy before changing it."""
    import numpy as np

    ds = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(32 * 32, dtype="<u2") * 4).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


# --------------------------------------------------------------------------- the node
@pytest.fixture
def start_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RunningNode]]:
    """Factory: ``start_node(folder=None, **settings_sections)`` starts an SCP; all stop after."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    started: list[RunningNode] = []

    def start(folder: Path | None = None, ssl_context: Any = None, **overrides: Any) -> RunningNode:
        settings = node_settings(folder or tmp_path / "node", **overrides)
        db = Database(settings.database_url)
        db.create_all()
        spool = Spool(settings.storage.spool_dir, settings.storage.min_free_bytes)
        scp = StoreSCP(
            settings.node, spool, db, calling_aes=list(settings.calling_aes),
            ssl_context=ssl_context,
        )
        host, port = scp.start()
        node = RunningNode(host, port, settings, spool, db, scp)
        started.append(node)
        return node

    yield start
    for node in started:
        node.scp.stop()
        node.db.dispose()


@pytest.fixture
def services() -> Iterator[list[Any]]:
    """Node services (:class:`dicom_node.ops.service.NodeService`) a test started; stopped at
    teardown."""
    started: list[Any] = []
    yield started
    for service in started:
        service.stop()


# --------------------------------------------------------------------------- pynetdicom SCU
@pytest.fixture
def scu_store() -> Callable[..., int]:
    """Factory: ``scu_store(node, dataset_or_path, calling_ae=SCU_AE, raw=False) -> status``.

    With ``raw=True`` a file is sent as its bytes, undecoded (pynetdicom's chunked send),
    so malformed data sets reach the node as they are.
    """

    def send(node: RunningNode, item: Dataset | Path, calling_ae: str = SCU_AE,
             raw: bool = False) -> int:
        if isinstance(item, Path):
            meta = pydicom.dcmread(item, stop_before_pixels=True).file_meta if not raw else (
                pydicom.filereader.read_file_meta_info(item)
            )
            sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
        else:
            sop_class, syntax = item.SOPClassUID, item.file_meta.TransferSyntaxUID
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(sop_class, [syntax])
        ae.add_requested_context(Verification)
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
        assert assoc.is_established, "association with the node failed"
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = raw
        try:
            status = assoc.send_c_store(item)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous
            assoc.release()
        assert "Status" in status, "no response from the node"
        return int(status.Status)

    return send


@pytest.fixture
def echo_ok(dcmtk: dict[str, str], dcmtk_env: dict[str, str]) -> Callable[[RunningNode], bool]:
    """``echo_ok(node)``: whether DCMTK's echoscu gets a C-ECHO answer from the node."""

    def echo(node: RunningNode) -> bool:
        result = subprocess.run(
            [dcmtk["echoscu"], "-aet", SCU_AE, "-aec", node.ae_title, node.host, str(node.port)],
            capture_output=True, text=True, timeout=30, env=dcmtk_env,
        )
        return result.returncode == 0

    return echo


# --------------------------------------------------------------------------- databases
@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty node database: a SQLite file, then the throwaway PostgreSQL database."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    else:
        db = Database(request.getfixturevalue("postgres_url"))
        db.drop_all()
    db.create_all()
    try:
        yield db
    finally:
        db.dispose()
