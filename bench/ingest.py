"""Benchmark: C-STORE ingest throughput of the node's SCP, DCMTK's storescp and pynetdicom's.

Measures images per second received over one association by three receivers, on the same
synthetic images and in one run:

* ``node``: the node's :class:`dicom_node.dicom.scp.StoreSCP`, built as ``dicom_node serve`` builds
  it (settings, SQLite database, spool with its free-space floor), in this process, on a
  temporary folder. Every instance is written atomically to the spool (temporary file,
  fsync, rename, fsync of the folder) and recorded in the database before success is
  answered.
* ``dcmtk``: DCMTK's ``storescp`` writing files to a temporary folder (no fsync).
* ``pynetdicom``: pynetdicom's storescp application (``python -m pynetdicom storescp``),
  writing files to a temporary folder (no fsync).
* ``pynetdicom-ignore``: the same application with ``--ignore`` and the node's max PDU: it
  receives every data set and stores nothing, so it measures pynetdicom's own cost, the
  ceiling of any SCP built on it (the node included).

The sender is always DCMTK's ``storescu -R`` sending every image over one association; the
time is the sender's wall time, from start to exit (association set-up and release
included). ``TCP_NODELAY=1`` is set for every DCMTK process (Debian's DCMTK leaves Nagle on,
about 40 ms per message otherwise). All servers listen on 127.0.0.1: DCMTK's storescp has no
bind option, so it runs with the ``LD_PRELOAD`` shim of ``tests/support/bind_loopback.c``.

Images: ``--images`` DX images (for presentation, explicit VR little endian) of ``--size``
squared 16-bit pixels (512 = 0.5 MB each), two per study, generated once. Receivers run
interleaved for ``--rounds`` rounds, each on a fresh folder (and, for the node, a fresh
database), and every run that stores checks that every image arrived. The load average is
printed before and after: on a shared machine, compare only figures of one run.

Usage::

    python bench/ingest.py [--images 200] [--rounds 3] [--size 512]
        [--receivers node,dcmtk,pynetdicom,pynetdicom-ignore] [--node-max-pdu BYTES]
        [--json FILE]

Goal: the node at least 0.75x DCMTK's storescp.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import func, select

# tests/support is imported from its folder, which then leaves sys.path again: tests/ holds
# folders named like the packages (tests/inference) that would shadow them.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
sys.path.insert(0, _TESTS)
try:
    from support.peers import (  # noqa: E402
        build_bind_shim,
        find_dcmtk,
        free_port,
        stop_process,
        wait_for_port,
    )
finally:
    sys.path.remove(_TESTS)

from dicom_node.dicom.scp import StoreSCP  # noqa: E402
from dicom_node.settings import NodeSettings, load_settings  # noqa: E402
from dicom_node.store import Database, Instance  # noqa: E402
from dicom_node.store.spool import Spool  # noqa: E402

#: Called AE title of every receiver.
RECEIVER_AE = "BENCHSCP"
#: Calling AE title of the sender.
SENDER_AE = "BENCHSCU"
#: Receivers in the order they run within a round.
RECEIVERS = ("node", "dcmtk", "pynetdicom", "pynetdicom-ignore")
#: Seconds one storescu run may take before the benchmark gives up.
SEND_TIMEOUT_S = 600


# --------------------------------------------------------------------------- images
def _dx_image(size: int, study_uid: str, series_uid: str, number: int, rng: np.random.Generator
              ) -> Dataset:
    """A synthetic chest DX image (presentation) of `size` x `size` 16-bit pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "BENCH^INGEST"
    ds.PatientID = "BENCH0001"
    ds.AccessionNumber = f"ACC{number // 2:05d}"
    ds.StudyDate = ds.SeriesDate = "20250301"
    ds.StudyTime = ds.SeriesTime = "080000"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA" if number % 2 == 0 else "LL"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number % 2 + 1
    ds.Manufacturer = "BENCH"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    return ds


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """Write `count` synthetic DX images (two per study) into `folder`.

    Parameters
    ----------
    folder
        Where the files go (created when missing).
    count
        Number of images.
    size
        Rows and columns of each image (16-bit pixels: 512 gives 0.5 MB).
    seed
        Seed of the pixel noise.

    Returns
    -------
    list of Path
        The files, in sending order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    study_uid = series_uid = ""
    for number in range(count):
        if number % 2 == 0:
            study_uid, series_uid = generate_uid(), generate_uid()
        ds = _dx_image(size, study_uid, series_uid, number, rng)
        path = folder / f"img{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# --------------------------------------------------------------------------- receivers
class Receiver(Protocol):
    """A C-STORE SCP under test: started on a fresh folder, stopped after one send."""

    name: str

    def start(self, folder: Path) -> int:
        """Start listening on 127.0.0.1, storing under `folder`; returns the port."""
        ...

    def stored(self) -> int | None:
        """How many instances the last run stored (``None``: the receiver stores nothing)."""
        ...

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        ...


class NodeReceiver:
    """The node's SCP with its spool and a SQLite database, as ``dicom_node serve`` builds it.

    Parameters
    ----------
    max_pdu
        ``node.max_pdu``; ``None`` keeps the node's default.
    """

    name = "node"

    def __init__(self, max_pdu: int | None = None) -> None:
        self._max_pdu = max_pdu
        self._scp: StoreSCP | None = None
        self._db: Database | None = None

    def start(self, folder: Path) -> int:
        node: dict[str, object] = {"ae_title": RECEIVER_AE, "port": 0,
                                   "bind_address": "127.0.0.1"}
        if self._max_pdu is not None:
            node["max_pdu"] = self._max_pdu
        settings = load_settings(
            None, node=node, storage={"folder": folder},
            database={"url": f"sqlite:///{folder / 'node.db'}"},
        )
        self._db = Database(settings.database_url)
        self._db.create_all()
        spool = Spool(settings.storage.spool_dir, settings.storage.min_free_bytes)
        self._scp = StoreSCP(settings.node, spool, self._db,
                             calling_aes=list(settings.calling_aes))
        return self._scp.start()[1]

    def stored(self) -> int:
        if self._db is None:
            return 0
        with self._db.engine.connect() as connection:
            return int(connection.execute(select(func.count(Instance.id))).scalar_one())

    def stop(self) -> None:
        if self._scp is not None:
            self._scp.stop()
            self._scp = None
        if self._db is not None:
            self._db.dispose()
            self._db = None


class ProcessReceiver:
    """An SCP program writing one file per instance into the run's folder.

    Parameters
    ----------
    name
        Name of the receiver in the results.
    command
        Builds the command line from the output folder and the port.
    env
        Environment of the process.
    stores
        Whether the program stores what it receives (``--ignore`` does not).
    """

    def __init__(self, name: str, command: Callable[[Path, int], list[str]],
                 env: dict[str, str], stores: bool = True) -> None:
        self.name = name
        self._command = command
        self._env = env
        self._stores = stores
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None

    def start(self, folder: Path) -> int:
        self._folder = folder / "received"
        self._folder.mkdir(parents=True)
        port = free_port()
        self._process = subprocess.Popen(
            self._command(self._folder, port), env=self._env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, self._process)
        return port

    def stored(self) -> int | None:
        if not self._stores:
            return None
        if self._folder is None:
            return 0
        return sum(1 for path in self._folder.rglob("*") if path.is_file())

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None


def dcmtk_receiver(storescp: str, env: dict[str, str]) -> ProcessReceiver:
    """DCMTK's storescp (defaults, Nagle off, kept on loopback by `env`'s preload)."""
    return ProcessReceiver(
        "dcmtk",
        lambda folder, port: [storescp, "-aet", RECEIVER_AE, "-od", str(folder),
                              "-fe", ".dcm", str(port)],
        env,
    )


def pynetdicom_receiver(ignore_pdu: int | None = None) -> ProcessReceiver:
    """pynetdicom's storescp application, quiet; defaults, or ``--ignore`` with a max PDU.

    Parameters
    ----------
    ignore_pdu
        ``None``: store files with the application's defaults (max PDU 16382). Otherwise
        receive with this max PDU and store nothing (``--ignore``).
    """
    extra = [] if ignore_pdu is None else ["--ignore", "--max-pdu", str(ignore_pdu)]
    return ProcessReceiver(
        "pynetdicom" if ignore_pdu is None else "pynetdicom-ignore",
        lambda folder, port: [sys.executable, "-m", "pynetdicom", "storescp", "-q",
                              "-aet", RECEIVER_AE, "-ba", "127.0.0.1", "-od", str(folder),
                              *extra, str(port)],
        dict(os.environ),
        stores=ignore_pdu is None,
    )


# --------------------------------------------------------------------------- runs
def send(storescu: str, env: dict[str, str], port: int, files: Sequence[Path]) -> float:
    """Send `files` over one association with DCMTK's storescu; returns the wall time (s).

    Raises ``RuntimeError`` when storescu reports a failure.
    """
    started = time.perf_counter()
    result = subprocess.run(
        [storescu, "-R", "-aet", SENDER_AE, "-aec", RECEIVER_AE, "127.0.0.1", str(port),
         *map(str, files)],
        capture_output=True, text=True, timeout=SEND_TIMEOUT_S, env=env,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


@dataclass
class Result:
    """Throughputs of one receiver, images per second, one value per round."""

    name: str
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def run_once(receiver: Receiver, storescu: str, env: dict[str, str], files: Sequence[Path],
             folder: Path) -> float:
    """One send of every file to a freshly started receiver; returns images per second.

    The run's folder is deleted afterwards: on a virtual machine, writing into page cache
    that grows (fresh guest memory) costs several times more than into recycled pages, so
    every run starts with the same amount of cached data.

    Raises ``RuntimeError`` when a receiver that stores did not store every image.
    """
    port = receiver.start(folder)
    try:
        elapsed = send(storescu, env, port, files)
        stored = receiver.stored()
    finally:
        receiver.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if stored is not None and stored != len(files):
        raise RuntimeError(f"{receiver.name} stored {stored} of {len(files)} images")
    return len(files) / elapsed


def run(receivers: Sequence[Receiver], storescu: str, env: dict[str, str],
        files: Sequence[Path], rounds: int, work: Path) -> list[Result]:
    """Run every receiver `rounds` times, interleaved; returns the throughputs."""
    results = {receiver.name: Result(receiver.name) for receiver in receivers}
    for round_number in range(rounds):
        for receiver in receivers:
            folder = work / f"{receiver.name}-{round_number}"
            rate = run_once(receiver, storescu, env, files, folder)
            results[receiver.name].rates.append(rate)
            print(f"round {round_number + 1}: {receiver.name:<18} {rate:7.1f} images/s",
                  flush=True)
    return list(results.values())


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _report(results: Sequence[Result]) -> dict[str, object]:
    by_name = {result.name: result for result in results}
    print(f"\n{'receiver':<18} {'median':>8} {'min':>8} {'max':>8}   images/s")
    for result in results:
        print(f"{result.name:<18} {result.median:8.1f} {min(result.rates):8.1f} "
              f"{max(result.rates):8.1f}")
    ratios = {}
    for name, other in (("node", "dcmtk"), ("node", "pynetdicom"),
                        ("pynetdicom-ignore", "dcmtk"), ("node", "pynetdicom-ignore")):
        if name in by_name and other in by_name:
            ratio = by_name[name].median / by_name[other].median
            ratios[f"{name}/{other}"] = ratio
            print(f"{name}/{other}: {ratio:.2f}x (medians)")
    return {"results": {r.name: r.rates for r in results}, "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images sent per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per receiver")
    parser.add_argument("--size", type=int, default=512, help="rows = columns of the images")
    parser.add_argument("--receivers", default=",".join(RECEIVERS),
                        help="comma-separated subset of " + ", ".join(RECEIVERS))
    parser.add_argument("--node-max-pdu", type=int, default=None,
                        help="override node.max_pdu (bytes, 0 = no limit)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.receivers.split(",") if name.strip()]
    unknown = set(names) - set(RECEIVERS)
    if unknown or not names:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown)) or '(none)'}")
    if args.images < 1 or args.rounds < 1 or args.size < 1:
        parser.error("--images, --rounds and --size must be positive")

    logging.basicConfig(level=logging.WARNING)
    storescu, storescp = find_dcmtk("storescu"), find_dcmtk("storescp")
    if storescu is None or storescp is None:
        print("DCMTK's storescu and storescp are needed: apt-get install dcmtk",
              file=sys.stderr)
        return 2
    env = dict(os.environ, TCP_NODELAY="1")
    node_max_pdu = (
        NodeSettings().max_pdu if args.node_max_pdu is None else args.node_max_pdu
    )
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temp:
        work = Path(temp)
        files = make_images(work / "images", args.images, args.size)
        size_mb = sum(path.stat().st_size for path in files) / len(files) / 1e6
        print(f"{len(files)} DX images of {size_mb:.2f} MB, {args.rounds} rounds; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, "
              f"node max PDU {node_max_pdu}; load average {_load()}")
        available: dict[str, Receiver] = {
            "node": NodeReceiver(node_max_pdu),
            "dcmtk": dcmtk_receiver(
                storescp, dict(env, LD_PRELOAD=str(build_bind_shim(work)))
            ),
            "pynetdicom": pynetdicom_receiver(),
            "pynetdicom-ignore": pynetdicom_receiver(ignore_pdu=node_max_pdu),
        }
        results = run([available[name] for name in names], storescu, env, files,
                      args.rounds, work)
    print(f"load average {_load()}")
    summary = _report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"images": args.images, "size": args.size, "rounds": args.rounds, **summary},
            indent=2, sort_keys=True,
        ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
