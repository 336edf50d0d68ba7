"""What the stages of one run share: data splits, cached images, the model parts."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference import ModelConfig, PromptBuilder, VisionTower
from report_language import CHEXPERT_LABELS
from training.config import StageConfig, TrainingConfig
from training.data import (
    Split,
    load_dicom_folder,
    load_mimic_cxr,
    load_mimic_split,
    load_phantom_csv,
    split_records,
)
from training.engine.images import load_image_cache
from training.engine.loop import StageTrainer
from training.errors import DatasetError, TrainingConfigError
from training.records import StudyRecord

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_records(config: TrainingConfig) -> list[StudyRecord]:
    """Read the run's dataset with the loader its ``data.kind`` names."""
    data = config.data
    if data.kind == "phantoms":
        path = data.path / "phantoms.csv" if data.path.is_dir() else data.path
        return load_phantom_csv(path)
    if data.kind == "mimic":
        if data.reports is None:
            raise TrainingConfigError("data.reports: the MIMIC-CXR reports root is required")
        return load_mimic_cxr(data.path, data.reports)
    if data.reports is None:
        raise TrainingConfigError("data.reports: the reports CSV of the DICOM folder is required")
    return load_dicom_folder(data.path, data.reports)


@dataclass
class RunContext:
    """State shared by the stages of a run.

    ``images[split]`` holds the preprocessed first (frontal) image of each study of
    ``splits[split]``, in the same order.
    """

    config: TrainingConfig
    model_config: ModelConfig
    device: torch.device
    run_dir: Path
    splits: dict[str, list[StudyRecord]]
    images: dict[str, np.ndarray]
    tower: VisionTower
    tokenizer: Any
    thresholds: dict[str, float] = field(
        default_factory=lambda: {label: 0.5 for label in CHEXPERT_LABELS}
    )
    resume: bool = False
    progress: bool = True
    _llm: Any = None

    @property
    def prompts(self) -> PromptBuilder:
        """The prompt builder inference uses, on this run's tokenizer and prompt config."""
        return PromptBuilder(self.tokenizer, self.model_config.prompt)

    def stage_dir(self, name: str) -> Path:
        """Folder of one stage's checkpoint, logs and outputs."""
        return self.run_dir / name

    @property
    def llm(self) -> Any:
        """The base causal LM (frozen; stages add adapters), loaded on first use."""
        if self._llm is None:
            model = AutoModelForCausalLM.from_pretrained(
                str(self.config.model.llm_dir), dtype=torch.float32
            )
            model = model.to(self.device)  # type: ignore[arg-type]
            for param in model.parameters():
                param.requires_grad_(False)
            if model.config.hidden_size != self.model_config.llm_hidden_size:
                raise TrainingConfigError(
                    f"model.config.llm_hidden_size ({self.model_config.llm_hidden_size}) "
                    f"differs from the LLM's hidden size ({model.config.hidden_size})"
                )
            self._llm = model
        return self._llm

    @llm.setter
    def llm(self, model: Any) -> None:
        self._llm = model

    def trainer(
        self,
        stage: str,
        module: torch.nn.Module,
        config: StageConfig,
        *,
        metric: str | None,
        mode: Literal["max", "min"],
    ) -> StageTrainer:
        """The shared training loop for one stage of this run (its folder, device, seed)."""
        return StageTrainer(
            stage,
            module,
            config,
            self.stage_dir(stage),
            self.device,
            seed=self.config.seed,
            metric=metric,
            mode=mode,
            progress=self.progress,
        )

    def train_size(self, config: StageConfig) -> int:
        """Training studies a stage uses: the split, capped by ``max_train_examples``."""
        n_train = len(self.splits["train"])
        return min(n_train, config.max_train_examples or n_train)

    def targets(self, split: str) -> np.ndarray:
        """Binary classifier targets ``(N, 14)`` of a split (uncertain/absent = 0)."""
        return np.array([r.binary_targets() for r in self.splits[split]], dtype=np.float32)


def build_context(
    config: TrainingConfig, *, resume: bool = False, progress: bool = True
) -> RunContext:
    """Load the data, split it by patient, cache the images and build the model parts.

    Raises
    ------
    DatasetError
        When the dataset is empty or a split has no studies.
    """
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    model_config = config.model.model_config_obj()
    records = load_records(config)
    if not records:
        raise DatasetError(f"{config.data.path}: the dataset has no usable studies")
    split: Split = split_records(
        records,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.data.split_seed,
        official=load_mimic_split(config.data.path) if config.data.kind == "mimic" else None,
    )
    splits = {"train": list(split.train), "val": list(split.val), "test": list(split.test)}
    if not splits["train"] or not splits["val"]:
        raise DatasetError(
            f"{config.data.path}: {len(records)} studies leave an empty train or validation "
            "split; add studies or change data.val_fraction"
        )
    run_dir = config.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = config.data.cache_dir or run_dir / "cache"
    images = {
        name: load_image_cache(
            [r.images[0] for r in splits[name]],
            model_config.preprocess,
            cache_dir,
            progress=progress,
        )
        for name in SPLITS
    }
    tower = VisionTower(model_config)
    if config.model.vision_init is not None:
        tower.load_state_dict(load_file(str(config.model.vision_init)), strict=True)
    tower.to(resolve_device(config.device))
    tokenizer = AutoTokenizer.from_pretrained(
        str(config.model.tokenizer_dir or config.model.llm_dir)
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "run %s: %d train / %d val / %d test studies",
        run_dir,
        len(splits["train"]),
        len(splits["val"]),
        len(splits["test"]),
    )
    return RunContext(
        config=config,
        model_config=model_config,
        device=resolve_device(config.device),
        run_dir=run_dir,
        splits=splits,
        images=images,
        tower=tower,
        tokenizer=tokenizer,
        resume=resume,
        progress=progress,
    )


__all__ = ["RunContext", "build_context", "load_records", "resolve_device", "seed_everything"]
