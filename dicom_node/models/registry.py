"""The site's model registry: registered bundles, their metrics, and the one active version.

Every bundle the site may run is copied into the registry folder (``retrain.registry_dir``,
default ``<storage.folder>/models``) as ``<version>/`` and recorded in the ``model_versions``
table with its headline metrics. Its manifest is stamped with the version name (and the
version it had before), so the reports a version drafts record that name as
``model_version``. Exactly one version is active; the workers draft with it
(:func:`dicom_node.jobqueue.context.model` reads it every ``retrain.active_check_s``).

* The first time the registry is used, the site's configured bundle (``inference.bundle``)
  is registered and made active (:func:`ensure_initial_version`).
* :func:`register_bundle` adds a version (a retrain candidate, an imported bundle); it is not
  active.
* :func:`promote` makes a version active. A candidate whose CE F1 (macro) is worse than the
  active version's is refused unless forced; when the candidate was evaluated against the
  active version on the same held-out studies (a retrain candidate), those figures are
  compared, otherwise each version's own evaluation.
* :func:`rollback` makes the version that was active before the current one active again.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from dicom_node.errors import NodeError
from dicom_node.settings import DEFAULT_BUNDLE, Settings
from dicom_node.store import Base, Database, ModelSource, ModelVersion, RetrainRun

if TYPE_CHECKING:
    from inference import Manifest

logger = logging.getLogger(__name__)

#: Version names: letters, digits, dot, dash, underscore; they are folder names too.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The metric the promotion gate compares (from :func:`training.evaluate.summary`).
GATE_METRIC = "ce_f1_macro"
#: Readable name of :data:`GATE_METRIC` in messages.
GATE_METRIC_NAME = "CE F1 macro"
#: Key of a candidate's metrics that holds the active model's figures on the same studies.
BASELINE_KEY = "baseline"
#: Manifest key the registry stamps into a registered copy.
MANIFEST_REGISTRY_KEY = "registry"
#: Seconds a registration waits for a concurrent registration of the same bundle.
CONCURRENT_WAIT_S = 30.0


class RegistryError(NodeError):
    """The model registry cannot do what was asked (the message says why)."""


class VersionNotFoundError(RegistryError):
    """No model version of that name is registered."""


class PromotionRefusedError(RegistryError):
    """A candidate's CE F1 is worse than the active version's (or cannot be compared)."""

    def __init__(self, message: str, gate: GateResult) -> None:
        super().__init__(message)
        self.gate = gate


class ConcurrentRegistrationError(RegistryError):
    """Another process registered the same version (or activated one) at the same moment."""


class ModelVersionUnavailableError(RegistryError):
    """The active version's bundle is not in this host's registry folder."""


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version, as listed by :func:`list_versions`."""

    version: str
    #: Absolute bundle folder on this host.
    bundle: Path
    model_name: str
    original_version: str | None
    metrics: dict[str, Any]
    source: ModelSource
    parent_version: str | None
    created_at: datetime
    active: bool
    promoted_at: datetime | None
    promoted_by: str | None
    previous_version: str | None
    promotion_note: str | None

    @property
    def ce_f1(self) -> float | None:
        """The version's own CE F1 (macro), or None when it was never evaluated."""
        return _figure(self.metrics.get(GATE_METRIC))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``model list --json``)."""
        return {
            "version": self.version,
            "bundle": str(self.bundle),
            "model_name": self.model_name,
            "original_version": self.original_version,
            "metrics": self.metrics,
            "source": self.source.value,
            "parent_version": self.parent_version,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "active": self.active,
            "promoted_at": self.promoted_at.isoformat(timespec="seconds")
            if self.promoted_at
            else None,
            "promoted_by": self.promoted_by,
            "previous_version": self.previous_version,
            "promotion_note": self.promotion_note,
        }


@dataclass(frozen=True)
class GateResult:
    """The CE F1 comparison of a promotion candidate with the active version."""

    candidate: str
    active: str
    candidate_f1: float | None
    active_f1: float | None
    #: How the figures were obtained (same held-out studies, or separate evaluations).
    basis: str
    passed: bool
    message: str


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` or :func:`rollback` did."""

    version: str
    previous: str
    gate: GateResult | None
    forced: bool


# --------------------------------------------------------------------------- helpers
def registry_dir(settings: Settings) -> Path:
    """The registry folder: ``retrain.registry_dir`` or ``<storage.folder>/models``."""
    return settings.retrain.registry_dir or settings.storage.folder / "models"


def ensure_registry_tables(db: Database) -> None:
    """Create the registry and retrain tables when they do not exist yet.

    ``dicom_node serve`` creates every table at start; this lets the model and retrain
    commands and a standalone worker run against a database created by an older node.
    """
    tables = [
        Base.metadata.tables[ModelVersion.__tablename__],
        Base.metadata.tables[RetrainRun.__tablename__],
    ]
    Base.metadata.create_all(db.engine, tables=tables)


def check_version_name(name: str) -> str:
    """Return `name` when it is a valid version name.

    Raises
    ------
    RegistryError
        For a name that is empty, too long or holds other characters than letters, digits,
        ``.``, ``-`` and ``_`` (it becomes a folder name).
    """
    if not VERSION_PATTERN.match(name):
        raise RegistryError(
            f"model version name {name!r} is not allowed: use 1 to 64 letters, digits, '.', "
            "'-' or '_', starting with a letter or digit"
        )
    return name


def derived_version_name(manifest_version: str) -> str:
    """A version name from a manifest's version: characters a folder name should not hold
    become ``-`` (``0.1.0+local`` -> ``0.1.0-local``); explicit names are never changed."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", manifest_version).strip(".-_")[:64]
    return name or "unnamed"


def _figure(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def manifest_metrics(manifest: Manifest) -> dict[str, Any]:
    """Headline metrics of a bundle's manifest, for the registry.

    A bundle evaluated by ``model build-demo`` keeps them under ``metrics.test`` (the
    output of :func:`training.evaluate.summary`); a bundle packaged by ``train`` holds
    only validation losses, which are not comparable, so it gives an empty dict.
    """
    raw = manifest.metrics or {}
    test = raw.get("test")
    if isinstance(test, Mapping) and GATE_METRIC in test:
        out: dict[str, Any] = dict(test)
        evaluated = raw.get("evaluated_with")
        if isinstance(evaluated, Mapping) and "split" in evaluated:
            out["evaluated_on"] = str(evaluated["split"])
        if isinstance(evaluated, Mapping) and isinstance(evaluated.get("site_studies"), int):
            out["site_studies"] = int(evaluated["site_studies"])
        return out
    if GATE_METRIC in raw:
        return {k: v for k, v in raw.items() if isinstance(v, int | float | str)}
    return {}


def _info(row: ModelVersion, root: Path) -> VersionInfo:
    try:
        metrics = json.loads(row.metrics_json or "{}")
    except json.JSONDecodeError:
        metrics = {}
    return VersionInfo(
        version=row.version,
        bundle=root / row.bundle_path,
        model_name=row.model_name,
        original_version=row.original_version,
        metrics=metrics if isinstance(metrics, dict) else {},
        source=row.source,
        parent_version=row.parent_version,
        created_at=row.created_at,
        active=bool(row.active),
        promoted_at=row.promoted_at,
        promoted_by=row.promoted_by,
        previous_version=row.previous_version,
        promotion_note=row.promotion_note,
    )


def _current_user() -> str:
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):
        return "unknown"


def _stamp_manifest(bundle: Path, version: str, extra: Mapping[str, Any]) -> None:
    """Record the registry name as the bundle's version (the manifest is not checksummed)."""
    from inference.bundle import MANIFEST_NAME

    path = bundle / MANIFEST_NAME
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw[MANIFEST_REGISTRY_KEY] = {"version": version, "original_version": raw.get("version"),
                                  **extra}
    raw["version"] = version
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def _same_files(folder: Path, manifest: Manifest) -> bool:
    from inference import InferenceError, load_manifest

    try:
        existing = load_manifest(folder, verify=False)
    except InferenceError:
        return False
    return existing.files == manifest.files and existing.external_files == manifest.external_files


# --------------------------------------------------------------------------- reading
def list_versions(db: Database, settings: Settings) -> list[VersionInfo]:
    """Every registered version, oldest first."""
    root = registry_dir(settings)
    with db.session() as session:
        rows = list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))
        return [_info(row, root) for row in rows]


def get_version(db: Database, settings: Settings, version: str) -> VersionInfo:
    """One registered version.

    Raises
    ------
    VersionNotFoundError
        When no version has that name (the message lists the registered ones).
    """
    with db.session() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if row is not None:
            return _info(row, registry_dir(settings))
        known = list(session.scalars(select(ModelVersion.version).order_by(ModelVersion.id)))
    raise VersionNotFoundError(
        f"no model version {version!r} is registered (registered: "
        f"{', '.join(known) if known else 'none'})"
    )


def active_version(db: Database, settings: Settings, *, ensure: bool = True) -> VersionInfo | None:
    """The active version; with `ensure`, the configured bundle is registered first if the
    registry is empty (see :func:`ensure_initial_version`).

    Raises
    ------
    inference.BundleError
        With `ensure`, when the registry is empty and ``inference.bundle`` is no valid bundle.
    """
    if ensure:
        return ensure_initial_version(db, settings)
    with db.session() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))
        return None if row is None else _info(row, registry_dir(settings))


def active_bundle(db: Database, settings: Settings) -> VersionInfo:
    """The active version, checked to be present in this host's registry folder.

    Raises
    ------
    ModelVersionUnavailableError
        When the active version's bundle folder is missing here (a worker host whose
        registry folder is neither shared nor synced).
    """
    active = ensure_initial_version(db, settings)
    if not (active.bundle / "manifest.json").is_file():
        raise ModelVersionUnavailableError(
            f"model version {active.version} is active but its bundle {active.bundle} is not "
            "on this host; share or copy the registry folder (retrain.registry_dir) to every "
            "worker host"
        )
    return active


# --------------------------------------------------------------------------- registering
def register_bundle(
    db: Database,
    settings: Settings,
    bundle: Path,
    *,
    version: str | None = None,
    source: ModelSource = ModelSource.IMPORTED,
    parent: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    move: bool = False,
    activate: bool = False,
    promoted_by: str | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> VersionInfo:
    """Copy a bundle into the registry and record it as a new (inactive) version.

    Parameters
    ----------
    db, settings
        The node's database and settings (``retrain.registry_dir``).
    bundle
        The bundle folder; its checksums are verified first.
    version
        Version name; default the bundle's manifest version
        (:func:`derived_version_name`).
    source
        Demo, retrain or imported.
    parent
        The version a retrain candidate was trained from.
    metrics
        Headline metrics (``ce_f1_macro``, ...); default those in the manifest
        (:func:`manifest_metrics`).
    move
        Move the folder instead of copying it (a retrain's freshly packaged candidate).
    activate
        Make it the active version at once (only the first version, by
        :func:`ensure_initial_version`); refused while another version is active.
    promoted_by, note
        Recorded with `activate`.
    now
        Registration time (timezone-aware); default now.

    Returns
    -------
    VersionInfo
        The registered version.

    Raises
    ------
    inference.BundleError
        When `bundle` is not a valid, intact model bundle.
    RegistryError
        For a bad or taken version name, or a registry folder that cannot be written.
    """
    from inference import load_manifest

    now = now or datetime.now(UTC)
    manifest = load_manifest(bundle, verify=True)
    name = check_version_name(version or derived_version_name(manifest.version))
    ensure_registry_tables(db)
    with db.session() as session:
        taken = session.scalar(select(ModelVersion.id).where(ModelVersion.version == name))
    if taken is not None:
        if activate:
            raise ConcurrentRegistrationError(f"model version {name!r} was registered meanwhile")
        raise RegistryError(
            f"model version {name!r} is already registered; give another name (--version)"
        )
    root = registry_dir(settings)
    dest = root / name
    if dest.exists():
        if not _same_files(dest, manifest):
            raise RegistryError(
                f"{dest} exists and holds another bundle; remove it or give another name"
            )
        logger.info("registry folder %s already holds this bundle; reusing it", dest)
        if move:
            shutil.rmtree(bundle)
    else:
        _place_bundle(bundle, dest, name, manifest, move, source, parent, now)
    row = ModelVersion(
        version=name,
        bundle_path=name,
        model_name=manifest.name[:64],
        original_version=manifest.version[:64],
        metrics_json=json.dumps(dict(metrics) if metrics is not None else
                                manifest_metrics(manifest), sort_keys=True),
        source=source,
        parent_version=parent,
        created_at=now,
        active=activate,
        promoted_at=now if activate else None,
        promoted_by=(promoted_by or _current_user()) if activate else None,
        promotion_note=note,
    )
    try:
        with db.session() as session:
            session.add(row)
            session.flush()
            info = _info(row, root)
    except IntegrityError as exc:
        raise ConcurrentRegistrationError(
            f"model version {name!r} was registered meanwhile"
            + (", or another version became active" if activate else "")
        ) from exc
    logger.info("model version %s registered (%s)", name, source.value)
    return info


def _place_bundle(
    bundle: Path,
    dest: Path,
    name: str,
    manifest: Manifest,
    move: bool,
    source: ModelSource,
    parent: str | None,
    now: datetime,
) -> None:
    """Copy (or move) `bundle` to `dest` through a temporary folder, stamped and verified."""
    from inference import load_manifest

    root = dest.parent
    partial = root / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if move:
            shutil.move(str(bundle), str(partial))
        else:
            shutil.copytree(bundle, partial)
        _stamp_manifest(
            partial,
            name,
            {"source": source.value, "parent_version": parent,
             "registered_at": now.isoformat(timespec="seconds")},
        )
        load_manifest(partial, verify=True)
        partial.rename(dest)
    except OSError as exc:
        if dest.is_dir() and _same_files(dest, manifest):
            # A concurrent registration of the same bundle won the rename.
            shutil.rmtree(partial, ignore_errors=True)
            return
        shutil.rmtree(partial, ignore_errors=True)
        raise RegistryError(f"cannot copy the bundle into the registry {root}: {exc}") from exc


def ensure_initial_version(db: Database, settings: Settings) -> VersionInfo:
    """The active version; registers ``inference.bundle`` as the first one if none exists.

    The configured bundle is used only this first time: later changes of
    ``inference.bundle`` do not change the active version (register and promote instead).

    Raises
    ------
    inference.BundleError
        When the registry is empty and the configured bundle is missing or damaged.
    RegistryError
        When versions exist but none is active (the database was edited by hand).
    """
    ensure_registry_tables(db)
    current = active_version(db, settings, ensure=False)
    if current is not None:
        return current
    with db.session() as session:
        count = len(list(session.scalars(select(ModelVersion.id).limit(1))))
    if count:
        raise RegistryError(
            "model versions are registered but none is active; promote one with "
            "'dicom_node model promote VERSION --force'"
        )
    bundle = settings.inference.bundle
    source = (
        ModelSource.DEMO
        if bundle.resolve() == DEFAULT_BUNDLE.resolve()
        else ModelSource.IMPORTED
    )
    try:
        return register_bundle(
            db,
            settings,
            bundle,
            source=source,
            activate=True,
            promoted_by="initial",
            note="the site's configured bundle (inference.bundle), registered as the first "
            "version",
        )
    except ConcurrentRegistrationError:
        # Another process registered it at the same moment: wait for its row.
        deadline = time.monotonic() + CONCURRENT_WAIT_S
        while time.monotonic() < deadline:
            current = active_version(db, settings, ensure=False)
            if current is not None:
                return current
            time.sleep(0.2)
        raise


# --------------------------------------------------------------------------- promotion
def _without_site_data(
    candidate: VersionInfo, active: VersionInfo, *, same_studies: bool
) -> str | None:
    """Why the figures hold no study of this site, or ``None`` when they may.

    Same held-out studies (a retrain): none of them from the site. Separate evaluations:
    either figure measured on synthetic phantoms (the demo model's test split).
    """
    if same_studies:
        if candidate.metrics.get("site_studies") == 0:
            return "the held-out studies hold none of this site's signed reports"
        return None
    for who, info in (("candidate", candidate), ("active version", active)):
        evaluated_on = str(info.metrics.get("evaluated_on", ""))
        if "phantom" in evaluated_on.lower():
            return f"the {who} {info.version} was evaluated on synthetic phantoms ({evaluated_on})"
    return None


def compare(candidate: VersionInfo, active: VersionInfo) -> GateResult:
    """Compare a candidate's CE F1 (macro) with the active version's.

    When the candidate's metrics hold a ``baseline`` measured for the active version on the
    same held-out studies (a retrain candidate), that figure is the active one; otherwise
    each version's own figure is used. Figures without any of this site's studies (held-out
    studies with no site study, or a phantom evaluation) are not compared: the gate refuses
    and says so ("no site data"); ``--force`` still promotes.
    """
    cand_f1 = candidate.ce_f1
    baseline = candidate.metrics.get(BASELINE_KEY)
    active_f1: float | None
    same_studies = isinstance(baseline, Mapping) and baseline.get("version") == active.version
    if isinstance(baseline, Mapping) and same_studies:
        active_f1 = _figure(baseline.get(GATE_METRIC))
        studies = candidate.metrics.get("n_studies")
        basis = (
            f"both on the same {int(studies)} held-out studies"
            if isinstance(studies, int | float)
            else "both on the same held-out studies"
        )
    else:
        active_f1 = active.ce_f1
        basis = "each from its own evaluation"
    no_site = _without_site_data(candidate, active, same_studies=same_studies)
    if cand_f1 is None:
        message = (
            f"candidate {candidate.version} has no {GATE_METRIC_NAME} figure (it was not "
            f"evaluated; an imported model has none until it is evaluated on this site's "
            f"studies), so it cannot be compared with the active version {active.version}"
        )
        passed = False
    elif active_f1 is None:
        message = (
            f"the active version {active.version} has no {GATE_METRIC_NAME} figure to compare "
            f"candidate {candidate.version} ({cand_f1:.3f}) with"
        )
        passed = False
    elif no_site is not None:
        message = (
            f"no site data: {no_site}, so comparing candidate {candidate.version} "
            f"({cand_f1:.3f}) with the active version {active.version} ({active_f1:.3f}) "
            "says nothing about this site's studies"
        )
        passed = False
    elif cand_f1 < active_f1:
        message = (
            f"candidate {candidate.version} has {GATE_METRIC_NAME} {cand_f1:.3f}, worse than "
            f"the active version {active.version} ({active_f1:.3f}; {basis})"
        )
        passed = False
    else:
        message = (
            f"candidate {candidate.version} has {GATE_METRIC_NAME} {cand_f1:.3f}, the active "
            f"version {active.version} {active_f1:.3f} ({basis})"
        )
        passed = True
    return GateResult(
        candidate.version, active.version, cand_f1, active_f1, basis, passed, message
    )


def _activate(
    db: Database,
    target: str,
    current: str,
    *,
    previous: str | None,
    by: str,
    note: str | None,
    now: datetime,
) -> None:
    """Make `target` the active version in one transaction, if `current` still is."""
    with db.session() as session:
        result = session.execute(
            update(ModelVersion)
            .where(ModelVersion.version == current, ModelVersion.active.is_(True))
            .values(active=False)
        )
        if not getattr(result, "rowcount", 1):
            raise RegistryError(
                f"the active version is no longer {current} (changed meanwhile); try again"
            )
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.version == target)
            .values(
                active=True,
                promoted_at=now,
                promoted_by=by[:64],
                previous_version=previous,
                promotion_note=None if note is None else note[:400],
            )
        )


def _check_present(info: VersionInfo) -> None:
    if not (info.bundle / "manifest.json").is_file():
        raise RegistryError(
            f"the bundle of model version {info.version} is missing at {info.bundle}"
        )


def promote(
    db: Database,
    settings: Settings,
    version: str,
    *,
    force: bool = False,
    by: str | None = None,
    now: datetime | None = None,
) -> PromotionResult:
    """Make a registered version the active one.

    Workers switch to it at their next job (within ``retrain.active_check_s``); jobs already
    running finish with the model they started with.

    Parameters
    ----------
    db, settings
        The node's database and settings.
    version
        The version to activate.
    force
        Promote even when its CE F1 is worse than the active version's, or cannot be
        compared.
    by
        Who promotes it (default: the OS user).
    now
        Promotion time; default now.

    Raises
    ------
    VersionNotFoundError
        For an unregistered version.
    PromotionRefusedError
        When the CE F1 gate refuses it and `force` is false; the message names both figures.
    RegistryError
        When it is already active, or its bundle is missing.
    """
    now = now or datetime.now(UTC)
    active = ensure_initial_version(db, settings)
    candidate = get_version(db, settings, version)
    if candidate.version == active.version:
        raise RegistryError(f"model version {version} is already the active version")
    _check_present(candidate)
    gate = compare(candidate, active)
    if not gate.passed and not force:
        raise PromotionRefusedError(
            f"{gate.message}; not promoted (use --force to promote it anyway)", gate
        )
    forced = not gate.passed
    _activate(
        db,
        candidate.version,
        active.version,
        previous=active.version,
        by=by or _current_user(),
        note=f"forced: {gate.message}" if forced else gate.message,
        now=now,
    )
    logger.info(
        "model version %s promoted (was %s)%s", candidate.version, active.version,
        " with --force" if forced else "",
    )
    return PromotionResult(candidate.version, active.version, gate, forced)


def rollback(
    db: Database, settings: Settings, *, by: str | None = None, now: datetime | None = None
) -> PromotionResult:
    """Make the version that was active before the current one active again.

    Repeated rollbacks walk further back through the promotions. The CE F1 gate does not
    apply: the version was active before.

    Raises
    ------
    RegistryError
        When the active version has no predecessor, or its bundle is missing.
    """
    now = now or datetime.now(UTC)
    active = ensure_initial_version(db, settings)
    if active.previous_version is None:
        raise RegistryError(
            f"the active version {active.version} has no previous version to roll back to"
        )
    target = get_version(db, settings, active.previous_version)
    _check_present(target)
    _activate(
        db,
        target.version,
        active.version,
        previous=target.previous_version,
        by=by or _current_user(),
        note=f"rollback from {active.version}",
        now=now,
    )
    logger.info("model version %s restored by rollback (was %s)", target.version,
                active.version)
    return PromotionResult(target.version, active.version, None, False)


__all__ = [
    "BASELINE_KEY",
    "GATE_METRIC",
    "ConcurrentRegistrationError",
    "GateResult",
    "ModelVersionUnavailableError",
    "PromotionRefusedError",
    "PromotionResult",
    "RegistryError",
    "VersionInfo",
    "VersionNotFoundError",
    "active_bundle",
    "active_version",
    "check_version_name",
    "compare",
    "derived_version_name",
    "ensure_initial_version",
    "ensure_registry_tables",
    "get_version",
    "list_versions",
    "manifest_metrics",
    "promote",
    "register_bundle",
    "registry_dir",
    "rollback",
]
