"""The chest X-ray vision-language model as used by the worker and the amend dialog.

:class:`ChestXrayVLM` ties the vision side (ONNX Runtime, or torch for verification) to the
language side (torch + LoRA adapters) through one :class:`~inference.prompt.PromptBuilder`:

* :meth:`ChestXrayVLM.generate_report` drafts a findings section for one study, and
  :meth:`~ChestXrayVLM.generate_reports` does so for several studies in one batch;
* :meth:`ChestXrayVLM.chat` answers a question or rewrites the report in the amend dialog,
  with the current report in context.

Both stream text through a callback, and ``stream_*`` variants yield it as an iterator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydicom.dataset import Dataset

from inference.anyres import Resolution, pack_tiles
from inference.bundle import Manifest, Provenance, load_manifest
from inference.config import GenerationConfig, ModelConfig
from inference.content_check import ContentCheck, ContentScore
from inference.errors import BundleError, ConfigError, InferenceError, PreprocessingError
from inference.generation import TextCallback, TextGenerator, TransformersGenerator
from inference.llm import LanguageModel, resolve_device
from inference.multimodal import (
    ImageFeatureBatch,
    MultimodalBatch,
    assemble_batch,
    assemble_feature_batch,
)
from inference.onnx_runtime import OnnxVisionRunner, OrtOptions, choose_providers
from inference.packaging import load_vision_tower
from inference.preprocessing import load_images, load_tiled_images
from inference.prompt import EncodedPrompt, PromptBuilder, Turn
from inference.speculative import LookupDecoding, NgramTable
from inference.vision import VisionTower
from report_language.labels import COMPATIBLE_WITH_NO_FINDING, NO_FINDING

logger = logging.getLogger(__name__)

ImageSource = Dataset | str | PathLike[str] | np.ndarray


class VisionRunner(Protocol):
    """Preprocessed pixels ``(B, C, S, S)`` -> ``(probabilities, image_embeddings)``."""

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class TorchVisionRunner:
    """Runs the torch :class:`VisionTower` (training, verification, GPU without ORT)."""

    def __init__(self, tower: VisionTower, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.tower = tower.to(self.device).eval()

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            probabilities, embeddings = self.tower(torch.from_numpy(pixel_values).to(self.device))
        return probabilities.float().cpu().numpy(), embeddings.float().cpu().numpy()


@dataclass
class RuntimeOptions:
    """Where and how a bundle runs (filled from the node's settings)."""

    vision_backend: Literal["onnx", "torch"] = field(
        default="onnx", metadata={"help": "'onnx' in production; 'torch' to verify or train."}
    )
    vision_precision: Literal["auto", "fp32", "int8"] = field(
        default="auto",
        metadata={
            "help": "ONNX vision model: 'int8' (vision.int8.onnx), 'fp32' (vision.onnx), or "
            "'auto' = int8 on CPU when the bundle has it, fp32 on CUDA."
        },
    )
    ort: OrtOptions = field(default_factory=OrtOptions)
    device: str = field(default="auto", metadata={"help": "LLM device: auto, cpu, cuda, cuda:N."})
    dtype: str = field(default="auto", metadata={"help": "LLM dtype: auto, float32, bfloat16."})
    verify_checksums: bool = field(default=True, metadata={"help": "Check sha256 on load."})
    merge_adapters: bool = field(
        default=True,
        metadata={
            "help": "Generate with adapters merged into the weights (faster decoding): one "
            "adapter in place, several as copies while they fit "
            "(LanguageModel.merge_adapters)."
        },
    )
    lookup_tokens: int = field(
        default=8,
        metadata={
            "help": "Tokens proposed per decoding step from the bundle's n-gram table of "
            "report text, checked by the LLM in one pass (the same text, fewer passes); "
            "0 = plain greedy decoding."
        },
    )

    lookup_max_batch: int = field(
        default=4,
        metadata={
            "help": "Largest batch decoded with lookup drafts (each step keeps the drafted "
            "tokens every sequence matched); larger batches decode plainly (on 2 CPU cores "
            "with the demo model drafts win up to 4 and lose at 8: docs/benchmarks.md)."
        },
    )
    kv_cache: Literal["bundle", "dynamic", "static"] = field(
        default="bundle",
        metadata={
            "help": "KV cache for generation: the bundle's (generation.cache_implementation), "
            "or 'dynamic' / 'static' (CUDA graphs on a GPU) for this host."
        },
    )

    def __post_init__(self) -> None:
        if self.lookup_tokens < 0:
            raise ConfigError(f"lookup_tokens must be >= 0, got {self.lookup_tokens}")
        if self.lookup_max_batch < 1:
            raise ConfigError(f"lookup_max_batch must be >= 1, got {self.lookup_max_batch}")


class NotChestError(PreprocessingError):
    """No image of a study passes the content check: none is a frontal chest radiograph."""


@dataclass(frozen=True)
class FindingPrediction:
    """One CheXpert label's probability and the bundle's decision threshold for it."""

    label: str
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        """Whether the probability reaches the label's threshold."""
        return self.probability >= self.threshold


@dataclass
class StudyAnalysis:
    """Vision-side result for one study."""

    findings: list[FindingPrediction]
    image_tokens: torch.Tensor
    #: Images left out because they could not be used: (index in the input, reason).
    unusable: list[tuple[int, str]] = field(default_factory=list)
    #: The content check of each image used, in input order (empty without a check).
    content: list[ContentScore] = field(default_factory=list)

    @property
    def positive_labels(self) -> list[str]:
        """Positive findings other than "No Finding", in the classifier's label order.

        The order is the one training prompts list the labels in (CheXpert order), so the
        prompt an image gets does not depend on which finding scored highest.
        """
        return [f.label for f in self.findings if f.positive and f.label != NO_FINDING]


@dataclass
class DraftReport:
    """A drafted report with the findings it was conditioned on."""

    text: str
    findings: list[FindingPrediction]
    indication: str | None
    model_name: str
    model_version: str


@dataclass
class StudyRequest:
    """One study of a batched :meth:`ChestXrayVLM.generate_reports` call."""

    images: Sequence[ImageSource] | StudyAnalysis
    indication: str | None = None
    #: Positive findings to list in the prompt instead of the classifier's (a redraft from
    #: a reader's corrected findings).
    findings: Sequence[str] | None = None


@dataclass
class ChatRequest:
    """One dialog turn of a batched :meth:`ChestXrayVLM.chat_many` call."""

    images: Sequence[ImageSource] | StudyAnalysis
    report: str
    instruction: str
    history: Sequence[Turn] = ()
    indication: str | None = None
    #: Positive findings to list in the prompt instead of the classifier's (the report's
    #: current coded findings, with a correction's stated findings applied).
    findings: Sequence[str] | None = None


@dataclass
class _LoadedStudy:
    """One study's preprocessed pixels before the vision side."""

    pixels: np.ndarray
    #: Index in the study's input of each image used.
    used: list[int]
    #: Images left out as unusable: (index in the input, reason).
    unusable: list[tuple[int, str]]
    #: Rows of ``pixels`` per image used: 1 each, or its tile count (LLaVA-NeXT tiles).
    tiles: list[int]
    #: Each image's (height, width) before tiling; empty for an untiled model.
    sizes: list[Resolution] = field(default_factory=list)


class ChestXrayVLM:
    """RaDialog-style chest X-ray report model.

    Parameters
    ----------
    config
        The model config.
    vision
        Vision runner (ONNX Runtime or torch).
    llm
        Language model with its adapters.
    thresholds
        Decision threshold per label.
    tasks
        Task (``report``, ``chat``) -> adapter name (``None`` = base model).
    name, version
        Identification of the model, recorded in every draft.
    lookup
        N-gram drafts for greedy decoding (:mod:`inference.speculative`); ``None`` decodes
        one token per forward pass.
    content_check
        Screens images before drafting (:mod:`inference.content_check`); ``None``: none.
    provenance
        Where the model comes from, its licence and intended use (recorded in every draft).
    generator
        The generation seam (:class:`~inference.generation.TextGenerator`); by default
        transformers on ``llm`` with ``lookup``.
    """

    def __init__(
        self,
        config: ModelConfig,
        vision: VisionRunner,
        llm: LanguageModel,
        thresholds: Mapping[str, float],
        *,
        tasks: Mapping[str, str | None] | None = None,
        name: str = "unnamed",
        version: str = "0",
        lookup: LookupDecoding | None = None,
        content_check: ContentCheck | None = None,
        provenance: Provenance | None = None,
        generator: TextGenerator | None = None,
    ) -> None:
        if llm.hidden_size != config.llm_hidden_size:
            raise InferenceError(
                f"LLM hidden size {llm.hidden_size} differs from the config's llm_hidden_size "
                f"{config.llm_hidden_size}"
            )
        if llm.image_token_id is not None and config.max_images != 1:
            raise InferenceError(
                "an LLM that puts image features in itself (image token "
                f"{llm.image_token_id}) takes one image per study: max_images must be 1, "
                f"not {config.max_images}"
            )
        self.config = config
        self.vision = vision
        self.llm = llm
        self.thresholds = {label: float(thresholds[label]) for label in config.classifier.labels}
        self.tasks = dict(tasks or {})
        self.prompts = PromptBuilder(llm.tokenizer, config.prompt)
        self.name = name
        self.version = version
        self._transformers = TransformersGenerator(llm, lookup)
        #: Where prepared batches become text.
        self.generator: TextGenerator = generator or self._transformers
        self.content_check = content_check
        #: Source, licence and intended use (from the bundle; None for older bundles).
        self.provenance = provenance

    @property
    def lookup(self) -> LookupDecoding | None:
        """The n-gram drafts of the transformers generator (``None``: plain decoding)."""
        return self._transformers.lookup

    @lookup.setter
    def lookup(self, value: LookupDecoding | None) -> None:
        self._transformers.lookup = value

    @classmethod
    def from_bundle(
        cls, path: str | PathLike[str], options: RuntimeOptions | None = None
    ) -> ChestXrayVLM:
        """Load a model bundle (checking its manifest and checksums).

        Raises
        ------
        BundleError
            For a missing, malformed or tampered bundle (the message names the file).
        """
        options = options or RuntimeOptions()
        manifest = load_manifest(path, verify=options.verify_checksums)
        return cls.from_manifest(manifest, options)

    @classmethod
    def from_manifest(cls, manifest: Manifest, options: RuntimeOptions) -> ChestXrayVLM:
        """Build the model from an already loaded manifest."""
        vision: VisionRunner
        if options.vision_backend == "onnx":
            onnx_file = select_vision_onnx(manifest, options.vision_precision, options.ort)
            vision = OnnxVisionRunner(
                onnx_file, options.ort, per_image=onnx_file == manifest.vision_onnx_int8
            )
        else:
            tower = load_vision_tower(manifest.config, manifest.vision_weights)
            vision = TorchVisionRunner(tower, options.device)
        llm = LanguageModel.load(
            manifest.llm_base,
            manifest.tokenizer,
            manifest.adapters,
            device=options.device,
            dtype=options.dtype,
            config_dir=manifest.llm_config,
            key_mapping=manifest.llm_key_mapping,
        )
        if options.merge_adapters:
            llm.merge_adapters(used=manifest.tasks.values())
        lookup = None
        if manifest.lookup_table is not None and options.lookup_tokens > 0:
            lookup = LookupDecoding(NgramTable.load(manifest.lookup_table), options.lookup_tokens,
                                    options.lookup_max_batch)
        config = manifest.config
        if options.kv_cache != "bundle":
            config = replace(config, generation=replace(
                config.generation, cache_implementation=options.kv_cache
            ))
        return cls(
            config,
            vision,
            llm,
            manifest.thresholds,
            tasks=manifest.tasks,
            name=manifest.name,
            version=manifest.version,
            lookup=lookup,
            content_check=(
                ContentCheck.load(manifest.content_check) if manifest.content_check else None
            ),
            provenance=manifest.provenance,
        )

    # ----------------------------------------------------------------------------- vision
    def analyse(
        self,
        images: Sequence[ImageSource],
        *,
        skip_unusable: bool = False,
        leave_out_non_chest: bool = True,
    ) -> StudyAnalysis:
        """Preprocess a study's images and run the vision side.

        A study's probability for a label is its maximum over the images (a finding seen in
        any view is present); the image tokens are those of the first ``max_images`` images.

        Parameters
        ----------
        images
            The study's images.
        skip_unusable
            Leave out images that cannot be used, listing them in
            :attr:`StudyAnalysis.unusable`, instead of failing the study; with a content
            check and ``leave_out_non_chest``, images it finds are not frontal chest
            radiographs are left out too (:class:`NotChestError` when none is left).

        Raises
        ------
        PreprocessingError
            When an image cannot be used (not an image, empty pixels, bad photometry), or
            with ``skip_unusable`` when none can.
        """
        (result,) = self.analyse_many(
            [images], skip_unusable=skip_unusable, leave_out_non_chest=leave_out_non_chest
        )
        if isinstance(result, PreprocessingError):
            raise result
        return result

    def analyse_many(
        self,
        studies: Sequence[Sequence[ImageSource]],
        *,
        skip_unusable: bool = False,
        leave_out_non_chest: bool = True,
    ) -> list[StudyAnalysis | PreprocessingError]:
        """:meth:`analyse` for several studies, their images through the vision side in one
        call.

        Each study's images are preprocessed on their own, so a study whose images cannot
        be used gets its error in its place of the result and the others are analysed;
        the usable pixels of all studies are stacked into one batch for the vision runner,
        and its outputs are split back per study. The results are those of :meth:`analyse`
        on each study.

        Returns
        -------
        list
            Per study, in order: its :class:`StudyAnalysis`, or the
            :class:`~inference.errors.PreprocessingError` (a :class:`NotChestError` among
            them) that :meth:`analyse` would raise for it.

        Raises
        ------
        InferenceError
            When the vision runner itself fails (for the whole batch).
        """
        loaded: list[_LoadedStudy | PreprocessingError] = []
        for images in studies:
            try:
                loaded.append(self._load_study(images, skip_unusable))
            except PreprocessingError as exc:
                loaded.append(exc)
        ready = [item for item in loaded if isinstance(item, _LoadedStudy)]
        if ready:
            probabilities, embeddings = self._run_vision(np.concatenate([r.pixels for r in ready]))
        results: list[StudyAnalysis | PreprocessingError] = []
        offset = 0
        for item in loaded:
            if isinstance(item, PreprocessingError):
                results.append(item)
                continue
            count = len(item.pixels)
            rows = slice(offset, offset + count)
            offset += count
            try:
                results.append(self._study_analysis(
                    item, probabilities[rows], embeddings[rows],
                    skip_unusable and leave_out_non_chest,
                ))
            except PreprocessingError as exc:
                results.append(exc)
        return results

    def _load_study(self, images: Sequence[ImageSource], skip_unusable: bool) -> _LoadedStudy:
        """One study's preprocessed pixels, and which images they are."""
        if not skip_unusable:
            return self._load_images(list(images), list(range(len(images))), [])
        unusable: list[tuple[int, str]] = []
        loaded: list[_LoadedStudy] = []
        for index, image in enumerate(images):
            try:
                loaded.append(self._load_images([image], [index], []))
            except PreprocessingError as exc:
                unusable.append((index, str(exc)))
        if not loaded:
            reasons = "; ".join(reason for _, reason in unusable)
            raise PreprocessingError(f"no image of the study can be used ({reasons})")
        return _LoadedStudy(
            np.concatenate([one.pixels for one in loaded]),
            [index for one in loaded for index in one.used],
            unusable,
            [count for one in loaded for count in one.tiles],
            [size for one in loaded for size in one.sizes],
        )

    def _load_images(
        self, images: list[ImageSource], used: list[int], unusable: list[tuple[int, str]]
    ) -> _LoadedStudy:
        pre = self.config.preprocess
        if pre.grid_pinpoints:
            pixels, tiles, sizes = load_tiled_images(images, pre)
            return _LoadedStudy(pixels, used, unusable, tiles, sizes)
        return _LoadedStudy(load_images(images, pre), used, unusable, [1] * len(images))

    def _run_vision(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
        """The vision side's ``(probabilities, image embeddings)`` for a batch of images.

        With ONNX Runtime and the LLM on a GPU that its session can write to, the embeddings
        come back as a tensor in GPU memory (I/O binding), ready for the LLM without a trip
        through host memory; otherwise both are arrays.
        """
        device = self.llm.device
        if (
            device.type == "cuda"
            and isinstance(self.vision, OnnxVisionRunner)
            and self.vision.binds(device)
        ):
            bound_probabilities, embeddings = self.vision.run_on(pixels, device)
            return bound_probabilities.cpu().numpy(), embeddings
        probabilities, arrays = self.vision(pixels)
        return np.asarray(probabilities), np.asarray(arrays)

    def _study_analysis(
        self,
        study: _LoadedStudy,
        probabilities: np.ndarray,
        embeddings: np.ndarray | torch.Tensor,
        leave_out_non_chest: bool,
    ) -> StudyAnalysis:
        """A study's analysis from its rows of the vision side's outputs (one row per
        image, or per tile of a tiled model, whose base tiles stand for their images in the
        findings and the content check)."""
        rows = torch.as_tensor(embeddings) if isinstance(embeddings, np.ndarray) else embeddings
        base = np.cumsum([0, *study.tiles[:-1]])
        images = self._image_tokens(study, rows)
        probabilities = probabilities[base]
        unusable = list(study.unusable)
        content: list[ContentScore] = []
        if self.content_check is not None:
            content = self.content_check.score(rows[base].cpu().numpy())
            if leave_out_non_chest:
                keep = [i for i, score in enumerate(content) if score.is_chest]
                for i, score in enumerate(content):
                    if not score.is_chest:
                        unusable.append((study.used[i], score.describe()))
                if not keep:
                    reasons = "; ".join(reason for _, reason in sorted(unusable))
                    raise NotChestError(f"no image of the study can be used ({reasons})")
                probabilities = probabilities[keep]
                images = [images[i] for i in keep]
                content = [content[i] for i in keep]
                unusable.sort()
        study_probs = probabilities.max(axis=0)
        findings = [
            FindingPrediction(label, float(p), self.thresholds[label])
            for label, p in zip(self.config.classifier.labels, study_probs, strict=True)
        ]
        tokens = torch.cat(images[: self.config.max_images])
        return StudyAnalysis(findings, tokens, unusable, content)

    def _image_tokens(self, study: _LoadedStudy, rows: torch.Tensor) -> list[torch.Tensor]:
        """Each image's image tokens ``(T_i, H)``: its row, or its tiles packed into one
        sequence (:func:`~inference.anyres.pack_tiles`)."""
        if not study.sizes:
            return list(rows)
        pre = self.config.preprocess
        newline = torch.tensor(self.config.aligner.image_newline, dtype=rows.dtype)
        tiles = torch.split(rows, study.tiles)
        return [
            pack_tiles(image, size, pre.grid_pinpoints, pre.image_size, newline)
            for image, size in zip(tiles, study.sizes, strict=True)
        ]

    def _analyses(
        self, inputs: Sequence[Sequence[ImageSource] | StudyAnalysis]
    ) -> list[StudyAnalysis]:
        """Each input's analysis: given, or computed (those in one vision call); the first
        unusable study raises its :class:`~inference.errors.PreprocessingError`."""
        pending = [item for item in inputs if not isinstance(item, StudyAnalysis)]
        computed = iter(self.analyse_many(pending) if pending else [])
        analyses: list[StudyAnalysis] = []
        for item in inputs:
            result = item if isinstance(item, StudyAnalysis) else next(computed)
            if isinstance(result, PreprocessingError):
                raise result
            analyses.append(result)
        return analyses

    # ----------------------------------------------------------------------------- prompts
    def _options(self, generation: GenerationConfig | None, **overrides: Any) -> GenerationConfig:
        options = generation or self.config.generation
        return replace(options, **overrides) if overrides else options

    def _batch(
        self, prompts: list[EncodedPrompt], analyses: list[StudyAnalysis]
    ) -> MultimodalBatch | ImageFeatureBatch:
        image_token_id = self.llm.image_token_id
        if image_token_id is not None:  # the model puts the image features in itself
            return assemble_feature_batch(
                prompts,
                [a.image_tokens for a in analyses],
                image_token_id=image_token_id,
                pad_token_id=self.llm.pad_token_id(),
                device=self.llm.device,
                dtype=self.llm.dtype,
            )
        return assemble_batch(
            self.llm.input_embeddings,
            prompts,
            [a.image_tokens for a in analyses],
            pad_token_id=self.llm.pad_token_id(),
            padding_side="left",
        )

    def prompt_findings(self, analysis: StudyAnalysis) -> list[str] | None:
        """The classifier's findings as the prompt lists them (``None``: the model has no
        findings head, and its prompt no findings line).

        "No Finding" is left out, unless ``prompt.list_no_finding`` is set and nothing but
        Support Devices is positive beside it (the rule RaDialog's prompts were made with).
        """
        if self.config.classifier.kind == "none":
            return None
        labels = analysis.positive_labels
        if not self.config.prompt.list_no_finding:
            return labels
        no_finding = any(f.label == NO_FINDING and f.positive for f in analysis.findings)
        if not no_finding or not set(labels) <= COMPATIBLE_WITH_NO_FINDING:
            return labels
        return [
            f.label for f in analysis.findings
            if f.positive and f.label in COMPATIBLE_WITH_NO_FINDING
        ]

    def _report_prompt(
        self,
        analysis: StudyAnalysis,
        indication: str | None,
        findings: Sequence[str] | None = None,
    ) -> EncodedPrompt:
        return self.prompts.encode(
            findings=self.prompt_findings(analysis) if findings is None else list(findings),
            indication=indication,
            instruction=self.config.prompt.report_instruction,
        )

    def _chat_batch(
        self,
        images: Sequence[ImageSource] | StudyAnalysis,
        report: str,
        history: Sequence[Turn],
        instruction: str,
        indication: str | None,
        findings: Sequence[str] | None = None,
    ) -> MultimodalBatch | ImageFeatureBatch:
        return self._chat_requests_batch(
            [ChatRequest(images, report, instruction, history, indication, findings)]
        )

    def _chat_requests_batch(
        self, requests: Sequence[ChatRequest]
    ) -> MultimodalBatch | ImageFeatureBatch:
        analyses = self._analyses([r.images for r in requests])
        prompts = [
            self.prompts.encode(
                findings=(
                    self.prompt_findings(analysis) if r.findings is None else list(r.findings)
                ),
                indication=r.indication,
                report=r.report,
                history=r.history,
                instruction=r.instruction,
            )
            for r, analysis in zip(requests, analyses, strict=True)
        ]
        return self._batch(prompts, analyses)

    # ----------------------------------------------------------------------------- reports
    def generate_report(
        self,
        images: Sequence[ImageSource],
        indication: str | None = None,
        *,
        generation: GenerationConfig | None = None,
        on_text: TextCallback | None = None,
    ) -> DraftReport:
        """Draft the findings section of one study.

        Parameters
        ----------
        images
            The study's frontal images (datasets, DICOM paths or display arrays); the first
            ``max_images`` provide image tokens.
        indication
            Clinical indication from the worklist, when known.
        generation
            Decoding options (defaults from the bundle config).
        on_text
            Called with each piece of text as it is generated (greedy decoding only).
        """
        analysis = self.analyse(images)
        batch = self._batch([self._report_prompt(analysis, indication)], [analysis])
        (text,) = self.generator.generate(
            batch,
            self._options(generation),
            adapter=self.tasks.get("report"),
            on_text=on_text,
        )
        return self._draft(text, analysis, indication)

    def generate_reports(
        self, studies: Sequence[StudyRequest], *, generation: GenerationConfig | None = None
    ) -> list[DraftReport]:
        """Draft several studies in one left-padded batch (same results as one by one).

        A request's ``images`` may be a :class:`StudyAnalysis` already computed, and its
        ``findings`` replace the classifier's positive findings in the prompt.
        """
        if not studies:
            return []
        analyses = self._analyses([s.images for s in studies])
        prompts = [
            self._report_prompt(a, s.indication, s.findings)
            for a, s in zip(analyses, studies, strict=True)
        ]
        texts = self.generator.generate(
            self._batch(prompts, analyses),
            self._options(generation),
            adapter=self.tasks.get("report"),
        )
        return [
            self._draft(text, analysis, study.indication)
            for text, analysis, study in zip(texts, analyses, studies, strict=True)
        ]

    def stream_report(
        self,
        images: Sequence[ImageSource] | StudyAnalysis,
        indication: str | None = None,
        *,
        generation: GenerationConfig | None = None,
        findings: Sequence[str] | None = None,
    ) -> tuple[StudyAnalysis, Iterator[str]]:
        """Return the vision analysis and an iterator over the report text as it appears.

        ``images`` may be an analysis already computed; ``findings`` replace the classifier's
        positive findings in the prompt.
        """
        analysis = images if isinstance(images, StudyAnalysis) else self.analyse(images)
        batch = self._batch([self._report_prompt(analysis, indication, findings)], [analysis])
        stream = self.generator.stream(
            batch,
            self._options(generation),
            adapter=self.tasks.get("report"),
        )
        return analysis, stream

    def _draft(self, text: str, analysis: StudyAnalysis, indication: str | None) -> DraftReport:
        return DraftReport(text, analysis.findings, indication, self.name, self.version)

    # ----------------------------------------------------------------------------- dialog
    def chat(
        self,
        images: Sequence[ImageSource] | StudyAnalysis,
        report: str,
        history: Sequence[Turn],
        instruction: str,
        *,
        indication: str | None = None,
        findings: Sequence[str] | None = None,
        generation: GenerationConfig | None = None,
        on_text: TextCallback | None = None,
    ) -> str:
        """One amend-dialog turn: answer a question or return a revised report.

        Parameters
        ----------
        images
            The study's images, or their :meth:`analyse` result (saves re-running the
            vision side on every turn of a dialog).
        report
            The current report text (kept in context).
        history
            Earlier turns of this study's dialog.
        instruction
            The radiologist's message ("there is no effusion", "is the heart enlarged?",
            "make it easier to read", "summarise").
        findings
            Positive findings to list in the prompt instead of the classifier's: the
            report's current coded findings, with the findings a correction states applied
            (the radiologist's word overrides the classifier). ``None`` lists the
            classifier's.
        indication, generation, on_text
            As for :meth:`generate_report`.
        """
        (text,) = self.generator.generate(
            self._chat_batch(images, report, history, instruction, indication, findings),
            self._options(generation),
            adapter=self.tasks.get("chat"),
            on_text=on_text,
        )
        return text

    def chat_many(
        self, requests: Sequence[ChatRequest], *, generation: GenerationConfig | None = None
    ) -> list[str]:
        """Several dialog turns (of different studies) in one left-padded batch.

        Gives the same texts as calling :meth:`chat` on each request (greedy decoding).
        """
        if not requests:
            return []
        return self.generator.generate(
            self._chat_requests_batch(requests),
            self._options(generation),
            adapter=self.tasks.get("chat"),
        )

    def stream_chat(
        self,
        images: Sequence[ImageSource] | StudyAnalysis,
        report: str,
        history: Sequence[Turn],
        instruction: str,
        *,
        indication: str | None = None,
        findings: Sequence[str] | None = None,
        generation: GenerationConfig | None = None,
    ) -> Iterator[str]:
        """Like :meth:`chat`, yielding the answer's text as it is generated."""
        return self.generator.stream(
            self._chat_batch(images, report, history, instruction, indication, findings),
            self._options(generation),
            adapter=self.tasks.get("chat"),
        )


def select_vision_onnx(
    manifest: Manifest, precision: Literal["auto", "fp32", "int8"], ort: OrtOptions
) -> Path:
    """Choose the ONNX vision file of a bundle for a precision setting.

    ``auto`` takes the int8 model when the bundle has one and ONNX Runtime will run on the
    CPU (dynamic int8 MatMuls are a CPU optimisation; on CUDA the float32 model is faster).

    Raises
    ------
    BundleError
        When ``int8`` is asked for and the bundle has no int8 model.
    """
    int8 = manifest.vision_onnx_int8
    if precision == "fp32":
        return manifest.vision_onnx
    if precision == "int8":
        if int8 is None:
            raise BundleError(
                f"{manifest.root}: the bundle has no int8 vision model; set vision_precision "
                "to 'fp32' or 'auto', or rebuild the bundle"
            )
        return int8
    on_cpu = choose_providers(ort.providers)[0] == "CPUExecutionProvider"
    return int8 if int8 is not None and on_cpu else manifest.vision_onnx


def bundle_summary(path: str | Path) -> dict[str, Any]:
    """Manifest facts for display (name, version, created, provenance, metrics, adapters,
    exporter)."""
    manifest = load_manifest(path, verify=False)
    return {
        "name": manifest.name,
        "version": manifest.version,
        "created": manifest.created,
        "aligner": manifest.config.aligner.kind,
        "backbone": manifest.config.vision.backbone.get("model_type"),
        "adapters": sorted(manifest.adapters),
        "exporter": manifest.exporter,
        "int8_vision": manifest.vision_onnx_int8 is not None,
        "lookup_table": manifest.lookup_table is not None,
        "content_check": manifest.content_check is not None,
        "provenance": manifest.provenance.to_dict() if manifest.provenance else None,
        "metrics": manifest.metrics,
    }


__all__ = [
    "ChatRequest",
    "ChestXrayVLM",
    "DraftReport",
    "FindingPrediction",
    "NotChestError",
    "ImageSource",
    "RuntimeOptions",
    "StudyAnalysis",
    "StudyRequest",
    "TorchVisionRunner",
    "VisionRunner",
    "bundle_summary",
    "select_vision_onnx",
]
