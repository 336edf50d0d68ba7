"""Published chest X-ray models as node bundles (``dicom_node model import KIND SOURCE``).

Each importer reads the files as their authors ship them, reads every size from their
tensors and configs, and writes a bundle of today's format through
:func:`inference.packaging.package_bundle` (staged, then renamed: no half-written bundle is
left behind). Errors are :class:`~inference.errors.CheckpointError` and name the file and
the key.
"""

from __future__ import annotations

from inference.importers.hf import import_hf
from inference.importers.libra import import_libra
from inference.importers.llava_rad import import_llava_rad
from inference.importers.radialog import import_radialog
from inference.importers.radialog_llava import import_radialog_llava
from inference.importers.xraygpt import import_xraygpt

#: The kinds ``dicom_node model import`` knows, with what each reads.
KINDS = {
    "radialog": "RaDialog v1 (ChantalMP/RaDialog): BioViL-T, BLIP-2 Q-Former, CheXpert "
    "classifier, Vicuna-7B v1.3 with its LoRA adapter and img_proj_layer",
    "radialog-llava": "RaDialog v2 / RaDialog-LLaVA: fine-tuned BioViL-T, mlp2x_gelu projector, "
    "CheXpert classifier, LoRA on LLaVA-1.5-7B (original LLaVA layout)",
    "xraygpt": "XrayGPT (mbzuai-oryx/XrayGPT): EVA ViT-g, BLIP-2 Q-Former, llama_proj, its "
    "fine-tuned Vicuna",
    "llava-rad": "LLaVA-Rad (microsoft/llava-rad): BiomedCLIP-CXR timm ViT (open_clip "
    "checkpoint), mlp2x_gelu projector, LoRA on Vicuna-7B v1.5",
    "libra": "Libra (X-iZhang/libra-v1.0-7b): RAD-DINO (all layers), the TAC temporal "
    "connector, its Llama (original LLaVA layout)",
    "hf": "a transformers image-text-to-text checkpoint (LLaVA-1.5, LLaVA-NeXT, Gemma 3 / "
    "MedGemma, MAIRA-2 with --trust-remote-code); the LLM stays in its shards",
}

__all__ = [
    "KINDS",
    "import_hf",
    "import_libra",
    "import_llava_rad",
    "import_radialog",
    "import_radialog_llava",
    "import_xraygpt",
]
