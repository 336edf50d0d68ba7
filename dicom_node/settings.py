"""Typed settings of the DICOM node.

Sources, later ones winning: defaults, a config file (``--config FILE`` or
``DICOM_NODE_CONFIG``; TOML, or YAML when it ends in ``.yaml``/``.yml``), ``DICOM_NODE_*``
environment variables (sections joined with ``__``, e.g. ``DICOM_NODE_INFERENCE__DEVICE=cuda``,
``DICOM_NODE_NODE__PORT=104``), then command-line flags. Unknown keys are refused, and every
error names the offending key.

Sections keyed by names (``calling_aes``, ``pacs``) are best set in the file: environment
variable names are case-insensitive, so give such a section as one JSON value, e.g.
``DICOM_NODE_CALLING_AES='{"ORTHANC": {"destinations": ["main"]}}'``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from dicom_node.errors import SettingsError

if TYPE_CHECKING:
    from inference import RuntimeOptions

#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "DICOM_NODE_CONFIG"
#: Config file suffixes read as YAML; any other suffix is read as TOML.
YAML_SUFFIXES = (".yaml", ".yml")
#: The longest AE title DICOM allows.
AE_TITLE_MAX_CHARS = 16
#: Smallest maximum PDU length accepted in settings (DCMTK's lower bound too).
MIN_PDU_BYTES = 4096
#: Database URL schemes the node supports (SQLAlchemy dialect names).
DATABASE_DIALECTS = ("sqlite", "postgresql")
#: Broker URL schemes accepted for the Celery queue.
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "memory")
#: Celery queues of the node: report drafting (GPU hosts), SR delivery, retraining.
QUEUE_NAMES = ("dialog", "gpu", "delivery", "training")
#: The default model bundle: the demo model (``dicom_node model build-demo``).
DEFAULT_BUNDLE = Path("models/demo")


class InferenceSettings(BaseModel):
    """Where the model bundle is and how it runs."""

    model_config = ConfigDict(extra="forbid")

    bundle: Path = Field(
        default=DEFAULT_BUNDLE,
        description="Model bundle directory used by infer and the worker; the default demo "
        "model is built by the first 'dicom_node serve'.",
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
        default="auto",
        description="LLM dtype; auto = bfloat16 on CUDA, and on CPUs where a probe at load "
        "times bfloat16 products at most 0.8x float32 (else float32).",
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
    merge_adapters: bool = Field(
        default=True,
        description="Generate with LoRA adapters merged into the LLM weights (faster "
        "decoding): a single adapter in place, at no memory cost; several as one copy each "
        "while the copies fit 2 GiB (a 7B model keeps them unmerged).",
    )
    lookup_tokens: int = Field(
        default=8,
        ge=0,
        le=64,
        description="Tokens proposed per decoding step from the bundle's n-gram table of "
        "report text and checked by the LLM in one pass (speculative decoding: the same "
        "text in fewer passes); 0 = plain greedy decoding.",
    )
    lookup_max_batch: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Largest batch (worker.batch_size) decoded with lookup drafts: each step "
        "keeps the drafted tokens every study in the batch matched; larger batches decode "
        "plainly. Measured on 2 CPU cores with the demo model: drafts win up to 4 (1.2-2.0x), "
        "even at 6, lose at 8 (0.75x); measure on a GPU before raising it there "
        "(docs/benchmarks.md).",
    )
    kv_cache: Literal["bundle", "dynamic", "static"] = Field(
        default="bundle",
        description="KV cache for generation: the bundle's choice, or 'dynamic' (grows per "
        "step) or 'static' (allocated once; transformers compiles the decoding step with CUDA "
        "graphs on a GPU) for this host. Static disables lookup decoding.",
    )
    screening: Literal["refuse", "warn"] = Field(
        default="refuse",
        description="Images the bundle's content check finds are not frontal chest "
        "radiographs, or outside the model's training distribution: refuse = left out, and "
        "a study with no image left, or with one outside the distribution, is not drafted "
        "(its job fails with the reason); warn = drafted with a prominent caution statement "
        "in the SR and on the reader page.",
    )
    self_test: bool = Field(
        default=True,
        description="Self-test every model when it is loaded (one image through the vision "
        "side, a few tokens through each adapter); a model that fails drafts nothing and "
        "/healthz names the failed check.",
    )

    def runtime_options(self) -> RuntimeOptions:
        """The :class:`inference.RuntimeOptions` these settings describe."""
        # Imported here: the inference stack (torch, transformers) is heavy, and the SCP,
        # the status command and config check must not pay for it.
        from inference import OrtOptions, RuntimeOptions

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
            merge_adapters=self.merge_adapters,
            lookup_tokens=self.lookup_tokens,
            lookup_max_batch=self.lookup_max_batch,
            kv_cache=self.kv_cache,
        )


def _check_ae_title(value: str) -> str:
    """Refuse an AE title DICOM does not allow (PS3.5 AE: 1-16 characters, no backslash)."""
    if not value.strip():
        raise ValueError("an AE title must not be empty")
    if len(value) > AE_TITLE_MAX_CHARS:
        raise ValueError(f"AE title {value!r} is longer than {AE_TITLE_MAX_CHARS} characters")
    if value != value.strip():
        raise ValueError(f"AE title {value!r} must not start or end with spaces")
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in value):
        raise ValueError(
            f"AE title {value!r} may hold printable ASCII characters other than a backslash only"
        )
    return value


def _check_ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class NodeSettings(BaseModel):
    """The node's own DICOM identity, network limits and study completion rule."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(default="CXRNODE", description="The node's AE title.")
    port: int = Field(
        default=11112, ge=0, le=65535, description="TCP port of the SCP (0 = any free port)."
    )
    bind_address: Annotated[str, AfterValidator(_check_ip_address)] = Field(
        default="127.0.0.1",
        description="Address the SCP listens on; 0.0.0.0 for every interface.",
    )
    max_pdu: int = Field(
        default=1024 * 1024,
        ge=0,
        description="Largest PDU the node accepts, in bytes (0 = no limit). Peers cut each "
        "data set into PDUs of at most this size; fewer, larger PDUs cost pynetdicom less "
        "(docs/benchmarks.md, ingest).",
    )
    acse_timeout: Seconds = Field(
        default=30.0, description="Seconds to wait for association messages."
    )
    dimse_timeout: Seconds = Field(default=60.0, description="Seconds to wait for DIMSE messages.")
    network_timeout: Seconds = Field(
        default=60.0, description="Seconds an idle association is kept open."
    )
    max_associations: int = Field(
        default=10, ge=1, description="Associations served at the same time."
    )
    max_connections_per_peer: int = Field(
        default=8,
        ge=1,
        description="Open connections one peer address may hold; more are closed at once "
        "(idle sockets of one host cannot take every association).",
    )
    first_pdu_timeout: Seconds = Field(
        default=5.0,
        description="Seconds a new connection may take to send its A-ASSOCIATE-RQ; an idle "
        "one is closed before it holds an association.",
    )
    max_instance_bytes: int = Field(
        default=256 * 2**20,
        ge=1024,
        description="Largest data set stored (after inflating a deflated one); larger ones "
        "are refused with a reason.",
    )
    max_pixel_bytes: int = Field(
        default=128 * 2**20,
        ge=1024,
        description="Largest decoded pixel data of an image for the model (Rows x Columns x "
        "frames x samples x bytes, checked before decoding); larger ones are refused.",
    )
    require_called_ae: bool = Field(
        default=False, description="Reject associations not addressed to ae_title."
    )
    stable_seconds: float = Field(
        default=2.0,
        ge=0,
        description="A study is complete when no instance arrived for this many seconds "
        "(Orthanc's StableAge).",
    )
    http_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="Port of /healthz and /metrics on bind_address (0 = any free port).",
    )
    assembly_interval_s: Seconds = Field(
        default=0.5,
        description="How often the node looks for complete studies and hands queued jobs "
        "and due SRs to the queue.",
    )

    @field_validator("max_pdu")
    @classmethod
    def _pdu_size(cls, value: int) -> int:
        if 0 < value < MIN_PDU_BYTES:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_PDU_BYTES} bytes")
        return value



class CallingAESettings(BaseModel):
    """One peer allowed to send studies, and where the reports of its studies go."""

    model_config = ConfigDict(extra="forbid")

    destinations: list[str] = Field(
        default_factory=list,
        description="Names of [pacs] destinations that receive the SRs of studies from this "
        "AE; empty = every destination.",
    )


class PacsDestination(BaseModel):
    """A PACS (C-STORE SCP) that receives the node's SRs."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(description="Called AE title of the PACS.")
    host: str = Field(min_length=1, description="Host name or address of the PACS.")
    port: Port = Field(description="DICOM port of the PACS.")
    tls: bool = Field(default=False, description="Send over TLS (the [tls] files are used).")


class RisSettings(BaseModel):
    """The RIS (modality worklist C-FIND SCP) that provides accession and indication."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(description="Called AE title of the worklist SCP.")
    host: str = Field(min_length=1, description="Host name or address of the worklist SCP.")
    port: Port = Field(description="DICOM port of the worklist SCP.")
    poll_interval_s: Seconds = Field(
        default=60.0, description="Seconds between two worklist queries."
    )
    modalities: list[str] = Field(
        default_factory=lambda: ["CR", "DX"],
        description="Scheduled modalities queried (one C-FIND each); empty = any modality.",
    )
    station_ae_title: AETitle | None = Field(
        default=None, description="Scheduled Station AE Title to match; none = any station."
    )
    lookback_days: int = Field(
        default=1, ge=0, description="Query procedure steps scheduled this many days back."
    )
    tls: bool = Field(default=False, description="Query over TLS (the [tls] files are used).")
    timeout_s: Seconds = Field(
        default=30.0,
        description="Seconds to wait for the connection, the association and each C-FIND "
        "response.",
    )
    retention_days: int = Field(
        default=7,
        ge=1,
        description="Worklist entries not returned by the RIS for this many days are deleted.",
    )


class DeliverySettings(BaseModel):
    """Sending SRs from the outbox to the PACS destinations (C-STORE SCU)."""

    model_config = ConfigDict(extra="forbid")

    retry_base_s: Seconds = Field(
        default=5.0,
        description="Wait before the first retry of a failed send; doubled on each further "
        "failure.",
    )
    retry_max_s: Seconds = Field(
        default=600.0, description="Longest wait between two attempts to send an SR."
    )
    timeout_s: Seconds = Field(
        default=30.0,
        description="Seconds to wait for the connection, the association and each C-STORE "
        "response.",
    )
    claim_timeout_s: Seconds = Field(
        default=45.0,
        description="An SR marked 'sending' whose sender has not reported for this long "
        "(it died) is pending again and sent again (at-least-once delivery); a sender "
        "reports every claim_timeout_s / 4.",
    )
    batch_size: int = Field(
        default=100, ge=1, description="Most outbox entries sent in one delivery pass."
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> DeliverySettings:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError(
                "delivery.retry_max_s must be at least delivery.retry_base_s "
                f"({self.retry_max_s} < {self.retry_base_s})"
            )
        return self


class StorageSettings(BaseModel):
    """Where received instances and outgoing SRs live on disk."""

    model_config = ConfigDict(extra="forbid")

    folder: Path = Field(
        default=Path("var/dicom_node"),
        description="Base folder of the node's files (and of the default SQLite database).",
    )
    spool: Path | None = Field(
        default=None, description="Received instances; default <folder>/spool."
    )
    outbox: Path | None = Field(
        default=None, description="SRs waiting for delivery; default <folder>/outbox."
    )
    reports: Path | None = Field(
        default=None, description="Every SR version the node wrote; default <folder>/reports."
    )
    min_free_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Refuse instances (status A700) when less space than this would remain.",
    )

    @model_validator(mode="after")
    def _default_folders(self) -> StorageSettings:
        if self.spool is None:
            self.spool = self.folder / "spool"
        if self.outbox is None:
            self.outbox = self.folder / "outbox"
        if self.reports is None:
            self.reports = self.folder / "reports"
        return self

    @property
    def spool_dir(self) -> Path:
        """The spool folder (``spool`` or ``<folder>/spool``)."""
        return self.spool if self.spool is not None else self.folder / "spool"

    @property
    def outbox_dir(self) -> Path:
        """The outbox folder (``outbox`` or ``<folder>/outbox``)."""
        return self.outbox if self.outbox is not None else self.folder / "outbox"

    @property
    def reports_dir(self) -> Path:
        """The folder of SR versions (``reports`` or ``<folder>/reports``)."""
        return self.reports if self.reports is not None else self.folder / "reports"



class DatabaseSettings(BaseModel):
    """The node's database (studies, instances, jobs, outbox)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default a "
        "SQLite file <storage.folder>/node.db.",
    )

    @field_validator("url")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.split("+", 1)[0] not in DATABASE_DIALECTS:
            raise ValueError(
                f"must be a SQLAlchemy URL of one of {', '.join(DATABASE_DIALECTS)} "
                "(e.g. sqlite:///node.db, postgresql+psycopg://user@host/db)"
            )
        return value



class BrokerSettings(BaseModel):
    """The message broker of the job queue."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="Celery broker URL (redis://host:6379/0); none = the embedded worker on "
        "a SQLite transport in the storage folder.",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery result store; default the broker URL for redis://, none otherwise "
        "(job outcomes live in the node's database).",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"must be a URL with one of the schemes {', '.join(BROKER_SCHEMES)}")
        return value


class WorkerSettings(BaseModel):
    """The report-drafting worker."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=1, ge=1, description="Jobs one worker runs at a time.")
    queues: list[str] = Field(
        default_factory=lambda: ["dialog", "gpu", "delivery"],
        min_length=1,
        description="Queues a worker consumes: dialog (the reader's dialog turns, taken "
        "before drafts), gpu (report drafting), delivery (SR C-STORE), training (retrain "
        "jobs).",
    )
    time_limit_s: Seconds = Field(
        default=900.0, description="Hard time limit of a report job; the worker is killed."
    )
    soft_time_limit_s: Seconds = Field(
        default=600.0, description="Soft time limit of a report job (the task is told first)."
    )
    max_retries: int = Field(
        default=5, ge=0, description="Retries of a job after a transient error (with backoff)."
    )
    retry_backoff_max_s: Seconds = Field(
        default=300.0, description="Longest wait between two retries of a job."
    )
    stale_job_s: Seconds = Field(
        default=45.0,
        description="A running job whose worker has not reported for this long (it died) "
        "is run again; a worker reports every stale_job_s / 4, for at most time_limit_s.",
    )
    redispatch_after_s: Seconds = Field(
        default=600.0,
        description="A queued job not started this long after it was sent to the queue is "
        "sent again (a message lost with a broker restart).",
    )
    metrics_port: Port | None = Field(
        default=None,
        description="Port of a worker's own /healthz and /metrics (dicom_node worker); "
        "none = off.",
    )
    unhealthy_after_failures: int = Field(
        default=3,
        ge=0,
        description="/healthz answers 503 when the last this many report jobs all failed "
        "(0 = never).",
    )
    batch_size: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Report jobs a gpu worker drafts together: the queued jobs it finds, up "
        "to this many, go through the vision side and one batched generate (1 = one study "
        "per job, with lookup decoding; see docs/node.md).",
    )
    batch_wait_ms: float = Field(
        default=200.0,
        ge=0,
        le=60_000,
        description="How long a gpu worker waits for more queued jobs to fill a batch of "
        "batch_size (milliseconds); unused with batch_size 1.",
    )

    @field_validator("queues")
    @classmethod
    def _known_queues(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(QUEUE_NAMES))
        if unknown:
            raise ValueError(f"unknown queue(s) {unknown}; known: {list(QUEUE_NAMES)}")
        return value

    @model_validator(mode="after")
    def _limits_in_order(self) -> WorkerSettings:
        if self.soft_time_limit_s >= self.time_limit_s:
            raise ValueError(
                "worker.soft_time_limit_s must be smaller than worker.time_limit_s"
            )
        return self


class TlsSettings(BaseModel):
    """TLS for DICOM associations (optional)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Serve the SCP over TLS.")
    cert: Path | None = Field(default=None, description="PEM certificate (chain) of the node.")
    key: Path | None = Field(default=None, description="PEM private key of the node.")
    ca: Path | None = Field(
        default=None, description="PEM CA bundle that peers' certificates are checked against."
    )
    require_client_cert: bool = Field(
        default=False, description="Require peers to present a certificate signed by ca."
    )

    @model_validator(mode="after")
    def _files_exist(self) -> TlsSettings:
        if not self.enabled:
            return self
        for name in ("cert", "key"):
            if getattr(self, name) is None:
                raise ValueError(f"tls.{name} is required when tls.enabled is true")
        if self.require_client_cert and self.ca is None:
            raise ValueError("tls.ca is required when tls.require_client_cert is true")
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"tls.{name}: file {path} does not exist")
        return self


#: Shortest bearer token accepted in ``api.users.<name>.token``.
API_TOKEN_MIN_CHARS = 16


def _check_api_user_name(value: str) -> str:
    if not 1 <= len(value) <= 64:
        raise ValueError(f"API user name {value!r} must have 1 to 64 characters")
    if not all(ch.isascii() and (ch.isalnum() or ch in "._@-") for ch in value):
        raise ValueError(
            f"API user name {value!r} may hold ASCII letters, digits and . _ @ - only"
        )
    return value


class ApiUser(BaseModel):
    """A reader of the dialog API: a bearer token and the identity recorded in the SRs."""

    model_config = ConfigDict(extra="forbid")

    token_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (lowercase hex) of the user's bearer token "
        "(printf %s TOKEN | sha256sum); preferred over token.",
    )
    token: SecretStr | None = Field(
        default=None,
        description=f"The bearer token itself, at least {API_TOKEN_MIN_CHARS} characters "
        "(development; prefer token_sha256).",
    )
    display_name: str = Field(
        min_length=1,
        description="Name in DICOM person-name form Family^Given; the SRs name it as amender "
        "and verifying observer.",
    )
    organization: str = Field(
        min_length=1,
        max_length=64,
        description="Organisation recorded as Verifying Organization when the user signs off.",
    )
    may_sign: bool = Field(default=True, description="Whether the user may sign reports off.")

    @field_validator("display_name")
    @classmethod
    def _person_name(cls, value: str) -> str:
        components = value.split("^")
        if len(components) > 5 or any(len(part) > 64 for part in components):
            raise ValueError("must be a DICOM person name: at most 5 ^-separated components "
                             "of at most 64 characters")
        if "\\" in value or "=" in value or any(ord(ch) < 0x20 for ch in value):
            raise ValueError("must not contain a backslash, '=' or control characters")
        if not value.replace("^", "").strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_token(self) -> ApiUser:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token_sha256 and token")
        if self.token is not None and len(self.token.get_secret_value()) < API_TOKEN_MIN_CHARS:
            raise ValueError(f"token must have at least {API_TOKEN_MIN_CHARS} characters")
        return self


class ApiSettings(BaseModel):
    """The amend-dialog HTTP API and reader page (``dicom_node serve``, ``dicom_node api``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False, description="Serve the dialog API and reader page with the node."
    )
    bind_address: Annotated[str, AfterValidator(_check_ip_address)] = Field(
        default="127.0.0.1",
        description="Address the API listens on; put a TLS reverse proxy in front of it "
        "for other hosts.",
    )
    port: int = Field(
        default=8080, ge=0, le=65535, description="TCP port of the API (0 = any free port)."
    )
    users: dict[Annotated[str, AfterValidator(_check_api_user_name)], ApiUser] = Field(
        default_factory=dict,
        description="Readers by user name; a request without one of their tokens gets 401.",
    )
    max_message_chars: int = Field(
        default=2000, ge=1, le=100_000, description="Longest dialog message accepted."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_report_chars: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Longest findings or impression text of an edit (413 above); about 20 "
        "times a long chest radiograph report.",
    )
    max_image_bytes: int = Field(
        default=128 * 2**20,
        ge=2**20,
        description="Largest decoded pixel data of an image the reader page shows (Rows x "
        "Columns x frames x samples x bytes per sample, checked before decoding; 422 above).",
    )
    auth_failure_limit: int = Field(
        default=10,
        ge=1,
        description="Failed bearer tokens one client address may present within "
        "auth_failure_window_s; further requests from it get 429 with Retry-After.",
    )
    auth_failure_window_s: Seconds = Field(
        default=300.0,
        description="Seconds a failed bearer token counts against its client address.",
    )
    history_turns: int = Field(
        default=1,
        ge=0,
        le=20,
        description="Earlier question/answer exchanges of the dialog given to the model.",
    )
    analysis_cache_size: int = Field(
        default=32, ge=1, description="Studies whose image analysis is kept in memory (LRU)."
    )
    worker_turn_timeout_s: Seconds = Field(
        default=60.0,
        description="With a Redis broker, dialog turns run on the workers (dialog queue): "
        "a turn fails with 503 when no worker takes it, or a worker sends nothing more, for "
        "this long.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from another site; empty = CORS off.",
    )

    @model_validator(mode="after")
    def _users_when_enabled(self) -> ApiSettings:
        if self.enabled and not self.users:
            raise ValueError("api.users: at least one user is required when api.enabled is true")
        return self


class RetrainSettings(BaseModel):
    """Retraining from signed-off reports and the model registry (``dicom_node retrain``)."""

    model_config = ConfigDict(extra="forbid")

    base_data: Path | None = Field(
        default=Path("models/demo.work/phantoms"),
        description="Base dataset mixed into every retrain so that the model does not forget "
        "(default: the phantoms of the demo build); max_base_studies = 0 trains on "
        "signed-off studies only.",
    )
    base_data_kind: Literal["phantoms", "mimic", "dicom"] = Field(
        default="phantoms", description="Loader of base_data: phantoms, mimic or dicom."
    )
    base_reports: Path | None = Field(
        default=None,
        description="Reports of base_data: the MIMIC-CXR reports root, or the reports CSV of "
        "a DICOM folder.",
    )
    max_base_studies: int = Field(
        default=2000,
        ge=0,
        description="Base studies used per retrain at most (a seeded sample; 0 = none).",
    )
    min_signed_off: int = Field(
        default=20,
        ge=1,
        description="A retrain with fewer signed-off studies than this is refused.",
    )
    val_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Share of patients used for validation."
    )
    test_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Share of patients held out to compare the candidate with the active "
        "model.",
    )
    max_steps: int = Field(
        default=200, ge=1, description="Optimiser steps of each retrained LoRA stage."
    )
    batch_size: int = Field(default=8, ge=1, description="Examples per optimiser step.")
    learning_rate: float = Field(
        default=1e-4, gt=0, description="Learning rate of the LoRA fine-tunes."
    )
    device: str = Field(
        default="auto", description="Training device: auto (CUDA when present), cpu, cuda:N."
    )
    eval_limit: int = Field(
        default=200,
        ge=1,
        description="Held-out studies evaluated at most (with both the candidate and the "
        "active model).",
    )
    eval_corrections: int = Field(
        default=20,
        ge=0,
        description="Correction examples answered for correction success (0 = skip).",
    )
    seed: int = Field(default=0, ge=0, description="Seed of sampling, splits and training.")
    time_limit_s: Seconds = Field(
        default=24 * 3600.0, description="Hard time limit of one retrain job."
    )
    work_dir: Path | None = Field(
        default=None,
        description="Data, checkpoints and logs of retrain runs; default <storage.folder>/"
        "retrain.",
    )
    registry_dir: Path | None = Field(
        default=None,
        description="Bundles of the registered model versions; default <storage.folder>/"
        "models. Every worker host needs the same versions here (shared or synced).",
    )
    active_check_s: Seconds = Field(
        default=5.0,
        description="Seconds a worker trusts its answer to 'which model version is active' "
        "before reading the registry again.",
    )
    log_tail_chars: int = Field(
        default=20000,
        ge=1000,
        description="Characters of a retrain run's log kept in the database.",
    )


class Settings(BaseSettings):
    """All settings of the node, one section per concern."""

    model_config = SettingsConfigDict(
        env_prefix="DICOM_NODE_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Log level of the command line and services."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as text, or as one JSON object per line (for log shippers).",
    )
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    node: NodeSettings = Field(default_factory=NodeSettings)
    calling_aes: dict[AETitle, CallingAESettings] = Field(
        default_factory=dict,
        description="Allowed calling AE titles and their routing; empty = accept any AE.",
    )
    pacs: dict[str, PacsDestination] = Field(
        default_factory=dict, description="PACS destinations of the SRs, by name."
    )
    ris: RisSettings | None = Field(default=None, description="The RIS worklist (optional).")
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    @model_validator(mode="after")
    def _cross_section_rules(self) -> Settings:
        # Default database: a SQLite file next to the spool.
        if self.database.url is None:
            self.database.url = f"sqlite:///{self.storage.folder / 'node.db'}"
        for ae_title, calling in self.calling_aes.items():
            unknown = [name for name in calling.destinations if name not in self.pacs]
            if unknown:
                known = ", ".join(sorted(self.pacs)) or "none configured"
                raise ValueError(
                    f"calling_aes.{ae_title}.destinations: unknown PACS destination(s) "
                    f"{', '.join(map(repr, unknown))} (known: {known})"
                )
        needs_tls = [f"pacs.{name}" for name, dest in self.pacs.items() if dest.tls]
        if self.ris is not None and self.ris.tls:
            needs_tls.append("ris")
        if needs_tls and (self.tls.cert is None or self.tls.key is None):
            raise ValueError(
                f"{', '.join(needs_tls)} use TLS: set tls.cert and tls.key (and tls.ca)"
            )
        return self

    @property
    def database_url(self) -> str:
        """The database URL (``database.url``, or the default SQLite file)."""
        return self.database.url or f"sqlite:///{self.storage.folder / 'node.db'}"

    def destinations_for(self, calling_ae: str) -> list[str]:
        """Names of the PACS destinations that receive the SRs of a calling AE's studies.

        Parameters
        ----------
        calling_ae
            AE title of the peer that sent the study.

        Returns
        -------
        list of str
            The AE's configured destinations, or every destination when it names none or
            is not in ``calling_aes``.
        """
        calling = self.calling_aes.get(calling_ae.strip())
        if calling is not None and calling.destinations:
            return list(calling.destinations)
        return sorted(self.pacs)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        # Cross-field rules name their keys themselves ("tls.cert: ...").
        lines.append(message if not key or message.startswith(key) else f"{key}: {message}")
    return f"invalid settings ({source}): " + "; ".join(lines)


def _check_config_file(path: Path) -> None:
    """Fail early, naming the file, when it is missing or not valid TOML/YAML."""
    if not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from exc
    if path.suffix.lower() in YAML_SUFFIXES:
        try:
            import yaml
        except ImportError as exc:
            raise SettingsError(
                f"config file {path}: YAML needs the PyYAML package (pip install pyyaml)"
            ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise SettingsError(f"config file {path} must hold a mapping of settings")
        return
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from defaults, a config file, the environment and explicit overrides.

    Parameters
    ----------
    config_file
        TOML file, or YAML when it ends in ``.yaml``/``.yml``; defaults to
        ``$DICOM_NODE_CONFIG`` when set.
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
        _check_config_file(path)

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
            if path is not None and path.suffix.lower() in YAML_SUFFIXES:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
            elif path is not None:
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
            # A section left empty by unset flags is dropped; one given empty on purpose
            # (an allowed AE with default routing: {"ORTHANC": {}}) is kept.
            if nested or not value:
                cleaned[key] = nested
        elif value is not None:
            cleaned[key] = value
    return cleaned


__all__ = [
    "AE_TITLE_MAX_CHARS",
    "API_TOKEN_MIN_CHARS",
    "ApiSettings",
    "ApiUser",
    "BROKER_SCHEMES",
    "CONFIG_ENV",
    "DATABASE_DIALECTS",
    "BrokerSettings",
    "CallingAESettings",
    "DatabaseSettings",
    "DeliverySettings",
    "InferenceSettings",
    "NodeSettings",
    "PacsDestination",
    "RetrainSettings",
    "RisSettings",
    "Settings",
    "StorageSettings",
    "TlsSettings",
    "WorkerSettings",
    "load_settings",
]
