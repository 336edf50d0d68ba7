"""End-to-end latency of the node: last image in -> SR stored in the PACS.

Starts a real Orthanc (the PACS, with a Lua rule that auto-forwards every stored image to the
node) and the node in this process with its embedded worker, on the model bundle given (the
demo model by default). For each of N phantom studies (DICOM CR/DX from ``training.phantoms``,
unseen by the demo model) it uploads the image to Orthanc, which forwards it to the node, and
waits for the node's SR to appear in Orthanc. One study is sent first as a warm-up.

Per study it reports, from the node's database:

* ``total``: the node's receipt of the last image -> Orthanc's success status for the SR's
  C-STORE (the SR is then stored in Orthanc, which the benchmark confirms);
* ``stable``: receipt -> job created (the study must be quiet for ``--stable-seconds``);
* ``queue``: job created -> job started by the worker;
* ``draft``: job started -> job done (spool read, worklist, model, SR build, outbox);
* ``model``: the model's part of ``draft`` (vision + generation);
* ``deliver``: job done -> Orthanc's success status for the SR.

It prints p50 and p95 of each, and the ratio of p50 ``total`` to the goal (5 s on 2 CPU cores).
Servers listen on 127.0.0.1 only (Orthanc through the loopback ``bind()`` shim of the tests).

Usage::

    python bench/e2e.py [--bundle models/demo] [--studies 20] [--stable-seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

# tests/support is imported from its folder, which then leaves sys.path again: tests/ holds
# folders named like the packages (tests/inference) that would shadow them.
_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
sys.path.insert(0, _TESTS)
try:
    from support.orthanc import ORTHANC_AE, Orthanc, wait_until  # noqa: E402
    from support.peers import build_bind_shim, free_port  # noqa: E402
finally:
    sys.path.remove(_TESTS)

from dicom_node.latency import INFERENCE_SECONDS  # noqa: E402
from dicom_node.ops.service import NodeService  # noqa: E402
from dicom_node.settings import load_settings  # noqa: E402
from dicom_node.store import Instance, Job, JobState, OutboxItem, OutboxState, Study  # noqa: E402

#: The latency goal of the issue: p50 of ``total`` on 2 CPU cores (seconds).
GOAL_P50_S = 5.0
NODE_AE = "CXRNODE"


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def make_studies(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` single-image phantom studies as DICOM files."""
    from training.phantoms import write_phantoms

    write_phantoms(folder, count, seed, fmt="dicom", workers=1, overwrite=True)
    files = sorted(folder.rglob("*.dcm"))
    if len(files) < count:
        raise RuntimeError(f"expected {count} DICOM phantoms in {folder}, found {len(files)}")
    return files[:count]


def _model_seconds() -> float:
    return float(INFERENCE_SECONDS._sum.get())  # noqa: SLF001 - the histogram's running sum


def measure(node: NodeService, pacs: Orthanc, path: Path, timeout: float) -> dict[str, float]:
    """Send one study through Orthanc and time its way back as an SR.

    The times come from the node's database: when it received the image, created, started
    and finished the job, and when Orthanc answered the SR's C-STORE with success (the
    outbox item's ``sent_at``). The database is polled every 50 ms only to know when to
    read them; Orthanc's REST API is asked once, to confirm it holds the SR in the study.
    """
    import pydicom

    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    model_before = _model_seconds()
    pacs.upload(path)

    def delivered() -> datetime | None:
        with node.db.session() as session:
            return session.scalar(
                select(OutboxItem.sent_at)
                .join(Study, OutboxItem.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid,
                       OutboxItem.state == OutboxState.SENT)
            )

    try:
        sent_at = wait_until(delivered, timeout, f"the SR of study {study_uid[-8:]}",
                             interval=0.05)
    except AssertionError:
        with node.db.session() as session:
            jobs = [(job.state, job.error) for job in session.scalars(select(Job))]
            studies = [(s.not_reportable_reason, s.instance_count)
                       for s in session.scalars(select(Study))]
        raise RuntimeError(f"no SR; studies {studies}, jobs {jobs}") from None
    if not pacs.find("Instance", StudyInstanceUID=study_uid, Modality="SR"):
        raise RuntimeError(f"the node sent the SR of study {study_uid[-8:]}, Orthanc lacks it")
    with node.db.session() as session:
        study_id, last_in = session.execute(
            select(Study.id, func.max(Instance.received_at))
            .join(Instance, Instance.study_id == Study.id)
            .where(Study.study_instance_uid == study_uid)
            .group_by(Study.id)
        ).one()
        job = session.scalars(select(Job).where(Job.study_id == study_id)).one()
        if job.state != JobState.DONE:
            raise RuntimeError(f"job {job.id} ended {job.state}: {job.error}")
        created, started, finished = job.created_at, job.started_at, job.finished_at
    assert started is not None and finished is not None

    def seconds(a: datetime, b: datetime) -> float:
        return (b - a).total_seconds()

    return {
        "total": seconds(last_in, sent_at),
        "stable": seconds(last_in, created),
        "queue": seconds(created, started),
        "draft": seconds(started, finished),
        "model": _model_seconds() - model_before,
        "deliver": seconds(finished, sent_at),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--stable-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=4242, help="phantom seed (unseen studies)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per study, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (args.bundle / "manifest.json").exists():
        parser.error(f"no bundle at {args.bundle}: dicom_node model build-demo --out {args.bundle}")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        files = make_studies(work / "studies", args.studies + 1, args.seed)
        node_port = free_port()
        env = dict(os.environ, TCP_NODELAY="1", LD_PRELOAD=str(build_bind_shim(work)))
        pacs = Orthanc(work / "orthanc", env, (NODE_AE, "127.0.0.1", node_port))
        settings = load_settings(
            None,
            node={"port": node_port, "http_port": 0, "ae_title": NODE_AE,
                  "stable_seconds": args.stable_seconds, "assembly_interval_s": 0.05},
            storage={"folder": work / "node", "min_free_bytes": 0},
            inference={"bundle": args.bundle},
            pacs={"orthanc": {"ae_title": ORTHANC_AE, "host": "127.0.0.1",
                              "port": pacs.dicom_port}},
        )
        pacs.start()
        node = NodeService(settings, http=False)
        try:
            started = time.perf_counter()
            node.start()
            load_s = time.perf_counter() - started
            measure(node, pacs, files[0], args.timeout)  # warm-up
            rows = [measure(node, pacs, path, args.timeout) for path in files[1:]]
        finally:
            node.stop()
            pacs.stop()

    keys = ("total", "stable", "queue", "draft", "model", "deliver")
    summary = {
        key: {"p50": percentile([r[key] for r in rows], 50),
              "p95": percentile([r[key] for r in rows], 95)}
        for key in keys
    }
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"bundle {args.bundle}; {len(rows)} studies; stable_seconds {args.stable_seconds}; "
          f"node start (model load) {load_s:.1f} s")
    print(f"{'part':<8} {'p50 s':>8} {'p95 s':>8}")
    for key in keys:
        print(f"{key:<8} {summary[key]['p50']:>8.2f} {summary[key]['p95']:>8.2f}")
    ratio = summary["total"]["p50"] / GOAL_P50_S
    print(f"p50 total / goal ({GOAL_P50_S:.0f} s) = {ratio:.2f} "
          f"({'met' if ratio <= 1 else 'not met'})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
