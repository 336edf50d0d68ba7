"""RaDialog-style chest X-ray vision-language model.

The vision side (encoder, CheXpert findings classifier, aligner) is exported to one ONNX file
and run by ONNX Runtime; the LLM with its LoRA adapters runs in torch. Everything ships as a
self-describing, checksummed model bundle. This package imports nothing from ``training``
or ``dicom_node``.
"""

from inference.bundle import Manifest, Provenance, load_manifest, verify_files
from inference.config import (
    AlignerConfig,
    ClassifierConfig,
    ConversationConfig,
    GenerationConfig,
    ModelConfig,
    PreprocessConfig,
    PromptConfig,
    VisionConfig,
)
from inference.errors import (
    BundleError,
    BundleIntegrityError,
    ConfigError,
    InferenceError,
    PreprocessingError,
    RuntimeUnavailableError,
)
from inference.llm import LanguageModel
from inference.model import (
    ChatRequest,
    ChestXrayVLM,
    DraftReport,
    FindingPrediction,
    RuntimeOptions,
    StudyAnalysis,
    StudyRequest,
    TorchVisionRunner,
    bundle_summary,
)
from inference.multimodal import IGNORE_INDEX, MultimodalBatch, assemble_batch
from inference.onnx_export import export_vision_onnx
from inference.onnx_runtime import OnnxVisionRunner, OrtOptions
from inference.packaging import load_vision_tower, package_bundle
from inference.preprocessing import dataset_to_display, load_images, preprocess_dataset, read_dicom
from inference.prompt import EncodedPrompt, PromptBuilder, Turn
from inference.speculative import LookupDecoding, NgramTable
from inference.tiny import build_tiny_bundle
from inference.verify import VerificationResult, verify_vision_parity
from inference.vision import VisionTower

__all__ = [
    "AlignerConfig",
    "BundleError",
    "BundleIntegrityError",
    "ChatRequest",
    "ChestXrayVLM",
    "ClassifierConfig",
    "ConfigError",
    "DraftReport",
    "EncodedPrompt",
    "FindingPrediction",
    "GenerationConfig",
    "IGNORE_INDEX",
    "InferenceError",
    "LanguageModel",
    "LookupDecoding",
    "Manifest",
    "Provenance",
    "ModelConfig",
    "MultimodalBatch",
    "NgramTable",
    "OnnxVisionRunner",
    "OrtOptions",
    "PreprocessConfig",
    "PreprocessingError",
    "PromptBuilder",
    "ConversationConfig",
    "PromptConfig",
    "RuntimeOptions",
    "RuntimeUnavailableError",
    "StudyAnalysis",
    "StudyRequest",
    "TorchVisionRunner",
    "Turn",
    "VerificationResult",
    "VisionConfig",
    "VisionTower",
    "assemble_batch",
    "build_tiny_bundle",
    "bundle_summary",
    "dataset_to_display",
    "export_vision_onnx",
    "load_images",
    "load_manifest",
    "load_vision_tower",
    "package_bundle",
    "preprocess_dataset",
    "read_dicom",
    "verify_files",
    "verify_vision_parity",
]
