"""Serving at scale on this machine: batch 1 against batch 8, end to end and at the model.

**End to end.** For each ``worker.batch_size`` (1, then 8) it starts a real Orthanc (the
PACS, auto-forwarding every stored image to the node) and a fresh node in this process with
its embedded worker, all other settings the node's defaults, sends one warm-up study, then
uploads N phantom studies (16 by default) to Orthanc at once and waits for every SR to be
stored back in Orthanc. Per batch size it reports:

* reports per minute: N / (last SR stored - first image received);
* p50 and p95 of each study's latency, the node's receipt of its last image -> Orthanc's
  success status for its SR (as ``bench/e2e.py`` ``total``);
* the batch sizes the worker drafted (from the jobs' shared ``started_at``).

**At the model.** On the same studies' analyses it times the decoding paths the worker uses:
one study at a time with lookup decoding (batch size 1), one at a time without it, and a
batch of 8 with plain batched ``generate`` and with batched lookup decoding: seconds per
report, median of 5 interleaved rounds. ``--model-only 1,2,4,8`` times only the last two at
each batch size (no node, no PACS), with how many texts agree.

The bundle is the demo model when it is built (``models/demo``), else the tiny random test
model (``inference.build_tiny_bundle``, the one the tests use); the output names which. The
figures of a tiny model show the machinery's overhead, not a real model's decoding cost.

Usage::

    python bench/serving.py [--bundle models/demo] [--studies 16] [--batch 8]
    python bench/serving.py --model-only 1,2,4,8 [--bundle models/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import NODE_AE, make_studies, percentile  # noqa: E402

_TESTS = str(Path(__file__).resolve().parents[1] / "tests")
sys.path.insert(0, _TESTS)
try:
    from support.orthanc import ORTHANC_AE, Orthanc, wait_until  # noqa: E402
    from support.peers import build_bind_shim, free_port  # noqa: E402
finally:
    sys.path.remove(_TESTS)

from dicom_node.ops.service import NodeService  # noqa: E402
from dicom_node.settings import load_settings  # noqa: E402
from dicom_node.store import Instance, Job, JobState, OutboxItem, OutboxState, Study  # noqa: E402

DEMO = Path("models/demo")


def choose_bundle(requested: Path | None, work: Path) -> tuple[Path, str]:
    """The bundle to serve and how to name it: the requested one, the demo model when
    built, else a tiny random one built now."""
    if requested is not None:
        if not (requested / "manifest.json").exists():
            raise SystemExit(f"no bundle at {requested}")
        return requested, str(requested)
    if (DEMO / "manifest.json").exists():
        return DEMO, "demo model (models/demo)"
    from inference import build_tiny_bundle

    return build_tiny_bundle(work / "tiny"), "TINY random test model (the demo is not built)"


def serve_burst(
    bundle: Path, batch_size: int, files: Sequence[Path], work: Path, timeout: float,
    screening: str | None = None,
) -> dict[str, Any]:
    """One end-to-end run: warm-up study, then every other file at once; the figures."""
    import pydicom

    work.mkdir(parents=True, exist_ok=True)
    node_port = free_port()
    env = dict(os.environ, TCP_NODELAY="1", LD_PRELOAD=str(build_bind_shim(work)))
    pacs = Orthanc(work / "orthanc", env, (NODE_AE, "127.0.0.1", node_port))
    settings = load_settings(
        None,
        node={"port": node_port, "http_port": 0, "ae_title": NODE_AE},
        storage={"folder": work / "node", "min_free_bytes": 0},
        inference={"bundle": bundle, **({"screening": screening} if screening else {})},
        worker={"batch_size": batch_size},
        pacs={"orthanc": {"ae_title": ORTHANC_AE, "host": "127.0.0.1",
                          "port": pacs.dicom_port}},
    )
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
    pacs.start()
    node = NodeService(settings, http=False)

    def sent(count: int) -> bool:
        with node.db.session() as session:
            done = session.scalar(
                select(func.count(OutboxItem.id)).where(OutboxItem.state == OutboxState.SENT)
            )
        return int(done or 0) >= count

    try:
        node.start()
        pacs.upload(files[0])  # warm-up: the model is loaded and has drafted once
        wait_until(lambda: sent(1), timeout, "the warm-up SR", interval=0.05)
        for path in files[1:]:
            pacs.upload(path)
        wait_until(lambda: sent(len(files)), timeout * len(files), "every SR", interval=0.05)
        rows = _latencies(node, uids[1:])
        batches = _batches(node, uids[1:])
        missing = [u for u in uids if not pacs.find("Instance", StudyInstanceUID=u,
                                                      Modality="SR")]
        if missing:
            raise RuntimeError(f"{len(missing)} SR(s) are not in Orthanc")
    finally:
        node.stop()
        pacs.stop()
    first_in = min(r["last_in"] for r in rows)
    last_out = max(r["sent_at"] for r in rows)
    span = (last_out - first_in).total_seconds()
    latencies = [(r["sent_at"] - r["last_in"]).total_seconds() for r in rows]
    return {
        "batch_size": batch_size,
        "studies": len(rows),
        "span_s": span,
        "reports_per_min": 60.0 * len(rows) / span,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "batches": batches,
    }


def _latencies(node: NodeService, uids: Sequence[str]) -> list[dict[str, datetime]]:
    rows = []
    with node.db.session() as session:
        for uid in uids:
            study_id, last_in = session.execute(
                select(Study.id, func.max(Instance.received_at))
                .join(Instance, Instance.study_id == Study.id)
                .where(Study.study_instance_uid == uid)
                .group_by(Study.id)
            ).one()
            sent_at = session.scalar(
                select(func.max(OutboxItem.sent_at)).where(OutboxItem.study_id == study_id)
            )
            job = session.scalars(select(Job).where(Job.study_id == study_id)).one()
            if job.state != JobState.DONE or sent_at is None:
                raise RuntimeError(f"job {job.id} ended {job.state}: {job.error}")
            rows.append({"last_in": last_in, "sent_at": sent_at})
    return rows


def _batches(node: NodeService, uids: Sequence[str]) -> list[int]:
    """Sizes of the batches the worker drafted (jobs of one batch share ``started_at``)."""
    with node.db.session() as session:
        starts = list(
            session.scalars(
                select(Job.started_at)
                .join(Study, Job.study_id == Study.id)
                .where(Study.study_instance_uid.in_(list(uids)))
            )
        )
    return sorted(Counter(starts).values(), reverse=True)


def decoding_paths(
    bundle: Path, files: Sequence[Path], batch: int, rounds: int = 5
) -> dict[str, float]:
    """Seconds per report of the worker's decoding paths on `batch` studies (median of
    `rounds`)."""
    from inference import ChestXrayVLM, RuntimeOptions, StudyRequest

    model = ChestXrayVLM.from_bundle(bundle, RuntimeOptions(device="cpu"))
    analyses = [model.analyse([f]) for f in files[:batch]]
    requests = [StudyRequest(a) for a in analyses]
    lookup = model.lookup
    model.generate_reports(requests[:1])  # warm-up

    def timed(run: Any) -> float:
        started = time.perf_counter()
        run()
        return (time.perf_counter() - started) / len(requests)

    paths: dict[str, Any] = {
        "batch 1, plain greedy": lambda: [model.generate_reports([r]) for r in requests],
        f"batch {len(requests)}, plain batched generate": lambda: model.generate_reports(
            requests
        ),
    }
    if lookup is not None:
        paths["batch 1, lookup decoding"] = lambda: [model.generate_reports([r])
                                                     for r in requests]
        paths[f"batch {len(requests)}, lookup decoding"] = lambda: model.generate_reports(
            requests
        )
    times: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(rounds):  # interleaved, so that a busy moment hits every path alike
        for label, run in paths.items():
            model.lookup = (
                replace(lookup, max_batch=len(requests))
                if lookup is not None and "lookup" in label else None
            )
            times[label].append(timed(run))
    results = {label: statistics.median(values) for label, values in times.items()}
    model.lookup = lookup
    return results


def batch_sizes_at_the_model(
    bundle: Path, files: Sequence[Path], sizes: Sequence[int], rounds: int = 3
) -> dict[int, dict[str, float]]:
    """Seconds per report, plain batched ``generate`` against batched lookup decoding, at
    each batch size (median of `rounds` interleaved rounds on the same studies), and the
    texts' agreement."""
    from inference import ChestXrayVLM, RuntimeOptions, StudyRequest

    model = ChestXrayVLM.from_bundle(bundle, RuntimeOptions(device="cpu"))
    lookup = model.lookup
    if lookup is None:
        raise SystemExit(f"{bundle} has no n-gram table: nothing to compare")
    analyses = [model.analyse([f]) for f in files[: max(sizes)]]
    model.generate_reports([StudyRequest(analyses[0])])  # warm-up
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        requests = [StudyRequest(a) for a in analyses[:size]]
        times: dict[str, list[float]] = {"plain": [], "lookup": []}
        texts: dict[str, list[str]] = {}
        for _ in range(rounds):
            for label in times:
                model.lookup = replace(lookup, max_batch=size) if label == "lookup" else None
                started = time.perf_counter()
                drafts = model.generate_reports(requests)
                times[label].append((time.perf_counter() - started) / size)
                texts[label] = [d.text for d in drafts]
        plain, fast = statistics.median(times["plain"]), statistics.median(times["lookup"])
        same = sum(a == b for a, b in zip(texts["plain"], texts["lookup"], strict=True))
        results[size] = {"plain_s": plain, "lookup_s": fast, "speedup": plain / fast,
                         "same_text": same / size}
    model.lookup = lookup
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None,
                        help="default: models/demo when built, else the tiny test model")
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=4343, help="phantom seed (unseen studies)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per study, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--screening", choices=("refuse", "warn"), default=None,
        help="inference.screening (default: the node's); 'warn' drafts phantoms the content "
        "check finds outside the distribution, so every study ends in an SR",
    )
    parser.add_argument(
        "--model-only", type=str, default=None, metavar="SIZES",
        help="only time decoding at the model, plain batched generate against batched "
        "lookup decoding, at these batch sizes (e.g. 1,2,4,8); no node, no PACS",
    )
    args = parser.parse_args(argv)

    if args.model_only:
        sizes = [int(v) for v in args.model_only.split(",")]
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            work = Path(tmp)
            bundle, bundle_name = choose_bundle(args.bundle, work)
            files = make_studies(work / "studies", max(sizes), args.seed)
            table = batch_sizes_at_the_model(bundle, files, sizes)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"bundle: {bundle_name}; s per report, median of 3 interleaved rounds")
        print(f"{'batch':>6} {'plain':>8} {'lookup':>8} {'speed-up':>9} {'same text':>10}")
        for size, row in table.items():
            print(f"{size:>6} {row['plain_s']:>8.3f} {row['lookup_s']:>8.3f} "
                  f"{row['speedup']:>8.2f}x {row['same_text']:>9.0%}")
        if args.json:
            args.json.write_text(json.dumps({"bundle": bundle_name, "model_only": table},
                                            indent=2))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        bundle, bundle_name = choose_bundle(args.bundle, work)
        files = make_studies(work / "studies", args.studies + 1, args.seed)
        runs = [
            serve_burst(bundle, size, files, work / f"batch{size}", args.timeout,
                        args.screening)
            for size in (1, args.batch)
        ]
        paths = decoding_paths(bundle, files[1:], args.batch)

    one, many = runs
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"bundle: {bundle_name}; {one['studies']} studies uploaded at once; node defaults "
          "otherwise (embedded worker)")
    print(f"{'':<22} {'batch 1':>10} {'batch ' + str(args.batch):>10} {'ratio':>8}")
    for key, label in (("reports_per_min", "reports / min"), ("p50_s", "p50 image->SR s"),
                       ("p95_s", "p95 image->SR s"), ("span_s", "burst span s")):
        ratio = many[key] / one[key]
        print(f"{label:<22} {one[key]:>10.2f} {many[key]:>10.2f} {ratio:>8.2f}")
    print(f"batches drafted: batch 1 {one['batches']}, batch {args.batch} {many['batches']}")
    print("decoding paths at the model (s per report):")
    for label, seconds in paths.items():
        print(f"  {label:<34} {seconds:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"bundle": bundle_name, "runs": runs,
                                         "decoding": paths}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
