"""The node's latency histograms, observed in the process that does the work.

They live below every room that times its work (:mod:`dicom_node.pipeline.delivery`,
:mod:`dicom_node.jobqueue.tasks`) so that no room imports the operations room above it;
:mod:`dicom_node.ops.metrics` exposes :data:`REGISTRY` with the database counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

#: The process's registry (not the global default one: no stray metrics of libraries).
REGISTRY = CollectorRegistry(auto_describe=True)

#: Buckets of model latency (seconds): CPU drafts take seconds, GPU drafts less than one.
INFERENCE_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
#: Buckets of one delivery attempt (seconds).
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

INFERENCE_SECONDS = Histogram(
    "dicom_node_inference_seconds",
    "Model time of one report draft (vision and generation).",
    buckets=INFERENCE_BUCKETS,
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "dicom_node_job_seconds",
    "Wall time of one report job (spool read, worklist, model, SR, outbox).",
    buckets=INFERENCE_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "dicom_node_delivery_seconds",
    "Time of one delivery pass to one PACS destination (one association, its due SRs); "
    "outcome 'sent' when every SR was stored.",
    ["outcome"],
    buckets=DELIVERY_BUCKETS,
    registry=REGISTRY,
)


__all__ = [
    "DELIVERY_BUCKETS",
    "DELIVERY_SECONDS",
    "INFERENCE_BUCKETS",
    "INFERENCE_SECONDS",
    "JOB_SECONDS",
    "REGISTRY",
]
