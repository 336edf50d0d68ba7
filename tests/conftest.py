"""Shared fixtures: one tiny random-weight bundle per test session, the sample chest CR."""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="torch.onnx")


@pytest.fixture(scope="session")
def chest_cr_path() -> Path:
    """RG1_UNCR.dcm: a real PA chest CR, 15-bit MONOCHROME1 (pydicom-data)."""
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("RG1_UNCR.dcm")))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT + Q-Former + Llama bundle with 'report' and 'instruct' adapters."""
    from inference import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def radialog_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RaDialog v1 download in the published formats, imported as a bundle."""
    from support.published.radialog import PROJECTOR_FILE, VICUNA_DIR, write_radialog_v1

    from inference.importers import import_radialog

    download = write_radialog_v1(tmp_path_factory.mktemp("radialog") / "RaDialog")
    return import_radialog(
        download, download.parent / "bundle", llm=download / VICUNA_DIR,
        visual_projector=download / PROJECTOR_FILE,
    )


@pytest.fixture(scope="session")
def llava_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA-1.5 in the llava-hf layout, imported: a model without findings head."""
    from support.published.llava import write_llava_hf

    from inference import Provenance
    from inference.importers import import_hf

    checkpoint = write_llava_hf(tmp_path_factory.mktemp("llava") / "llava-tiny")
    return import_hf(checkpoint, checkpoint.parent / "bundle", name="llava-tiny",
                     provenance=Provenance(source="tiny llava", licence="none",
                                           intended_use="Tests only."))


@pytest.fixture(scope="session")
def screened_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a content check fitted on phantom frontals against synthetic
    negatives (its own random vision tower computes the embeddings)."""
    import shutil

    import numpy as np

    from inference.bundle import load_manifest
    from inference.preprocessing import preprocess_display_image
    from training.phantoms._generate import PhantomConfig, generate_phantom
    from training.recipes.content import fit_bundle_content_check

    bundle = tmp_path_factory.mktemp("bundles") / "screened"
    shutil.copytree(tiny_bundle, bundle)
    config = load_manifest(bundle, verify=False).config.preprocess
    phantoms = [
        preprocess_display_image(generate_phantom(7, i, PhantomConfig(size=256)).image, config)
        for i in range(90)
    ]
    fit_bundle_content_check(bundle, np.stack(phantoms[:60]), np.stack(phantoms[60:]))
    return bundle


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle: Path):  # type: ignore[no-untyped-def]
    """The tiny bundle loaded with the ONNX Runtime vision path on CPU."""
    from inference import ChestXrayVLM, RuntimeOptions

    return ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu"))


#: Environment variable with the PostgreSQL server URL for the tests (its database is only
#: used to create and drop a throwaway one).
POSTGRES_URL_ENV = "DICOM_NODE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database, created for the session and dropped after.

    The server is ``$DICOM_NODE_TEST_POSTGRES_URL`` (default the local one, which ``.ci/run``
    starts). The tests that use it fail when no server answers: production runs on
    PostgreSQL, so its tests must run, never be skipped.
    """
    import psycopg  # noqa: F401 - the driver is a dependency
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    server = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"dicom_node_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {server.render_as_string()} ({exc}); start it "
            f"(.ci/run does) or point {POSTGRES_URL_ENV} at a server",
            pytrace=False,
        )
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` on machines without CUDA (CI has none)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
