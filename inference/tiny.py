"""A tiny random-weight bundle for tests and smoke runs, built in seconds on CPU.

It has every part of a real bundle: a byte-level BPE tokenizer trained with ``tokenizers`` on
a few report sentences (with a ChatML chat template), a tiny Llama, a tiny vision backbone,
the chosen aligner, two LoRA adapters (``report`` and ``instruct``) with random,
non-zero weights so that switching adapters changes the output, and an n-gram table of the
tokenizer's report sentences for lookup decoding. Its text is gibberish: it proves the
plumbing, not the medicine.
"""

from __future__ import annotations

import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from inference.bundle import Provenance
from inference.config import (
    AlignerConfig,
    AlignerKind,
    GenerationConfig,
    ModelConfig,
    PreprocessConfig,
    VisionConfig,
)
from inference.packaging import package_bundle
from inference.speculative import NgramTable
from inference.vision import VisionTower
from report_language.labels import CHEXPERT_LABELS

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", EOS_TOKEN, PAD_TOKEN)

#: ChatML, the template family of SmolLM2-Instruct (the demo model's LLM).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Sentences the tiny tokenizer is trained on: radiology phrasing plus the prompt wording.
TOKENIZER_CORPUS = (
    "The heart size is normal. The mediastinal contours are within normal limits.",
    "There is no focal consolidation, pleural effusion or pneumothorax.",
    "Moderate cardiomegaly with small bilateral pleural effusions.",
    "Right lower lobe opacity may represent pneumonia in the appropriate clinical setting.",
    "Atelectasis at the left lung base. No evidence of pulmonary edema.",
    "A right internal jugular central venous catheter terminates in the cavoatrial junction.",
    "Endotracheal tube tip is 4 cm above the carina. Nasogastric tube courses below the diaphragm.",
    "Small left apical pneumothorax. Healing fracture of the right posterior sixth rib.",
    "A 1.5 cm nodule in the right upper lobe. Follow-up CT is recommended.",
    "Enlarged cardiomediastinal silhouette. Mild interstitial edema.",
    "Pleural thickening at the right apex, unchanged. Lungs are clear.",
    "Impression: No acute cardiopulmonary process.",
    "Indication: shortness of breath, fever and cough. Evaluate for pneumonia.",
    "Image information: <ImageHere>. Predicted findings: no abnormal findings.",
    "Clinical indication: chest pain. Current report: the lungs are clear.",
    "You are to act as a radiologist and write the findings section of a chest X-ray report.",
    "Is the heart enlarged? Yes, there is cardiomegaly. There is no effusion.",
    "Make it easier to read. Summarise the report in one sentence.",
    "You are an experienced radiologist reading chest radiographs.",
)


def train_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on :data:`TOKENIZER_CORPUS` (a fraction of a second)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TOKENIZER_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=2048,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_backbone(kind: str) -> dict[str, Any]:
    """HF config dicts of tiny vision backbones (64 x 64 input)."""
    backbones: dict[str, dict[str, Any]] = {
        "vit": dict(
            model_type="vit",
            image_size=64,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_channels=3,
        ),
        "dinov2": dict(
            model_type="dinov2",
            image_size=64,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
        ),
        "resnet": dict(
            model_type="resnet",
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_channels=3,
        ),
        "swin": dict(
            model_type="swin",
            image_size=64,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_channels=3,
        ),
    }
    if kind not in backbones:
        raise ValueError(f"unknown tiny backbone {kind!r}; choose from {sorted(backbones)}")
    return backbones[kind]


def tiny_config(aligner: AlignerKind = "qformer", backbone: str = "vit") -> ModelConfig:
    """Config of the tiny model: 64 px input, 32-wide vision, 64-wide Llama."""
    return ModelConfig(
        preprocess=PreprocessConfig(image_size=64),
        vision=VisionConfig(tiny_backbone(backbone)),
        aligner=AlignerConfig(
            kind=aligner,
            num_query_tokens=32,
            qformer=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                cross_attention_frequency=1,
            ),
            max_image_tokens=16,
        ),
        llm_hidden_size=64,
        generation=GenerationConfig(max_new_tokens=24),
    )


def tiny_llm(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A 2-layer, 64-wide Llama sized to the tokenizer."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        # Wider than the usual 0.02 so that random outputs depend on the input instead of
        # collapsing onto one repeated token (tests compare outputs across prompts).
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def _random_lora() -> LoraConfig:
    # Random (non-zero) B matrices: an untrained adapter must still change the output.
    return LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )


def build_tiny_bundle(
    out_dir: str | PathLike[str],
    *,
    aligner: AlignerKind = "qformer",
    backbone: str = "vit",
    seed: int = 0,
    int8: bool = True,
) -> Path:
    """Write a tiny random-weight bundle to ``out_dir`` and return its path.

    Parameters
    ----------
    out_dir
        Destination directory (must not exist).
    aligner
        ``qformer``, ``linear`` or ``mlp``.
    backbone
        Tiny vision backbone: ``vit``, ``dinov2``, ``resnet`` or ``swin``.
    seed
        Seed for every random weight.
    int8
        Also write the int8-quantised vision model.
    """
    torch.manual_seed(seed)
    config = tiny_config(aligner, backbone)
    tokenizer = train_tiny_tokenizer()
    tower = VisionTower(config).eval()
    base = tiny_llm(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        base.save_pretrained(str(base_dir))
        peft_model = get_peft_model(base, _random_lora(), adapter_name="report")
        peft_model.add_adapter("instruct", _random_lora())
        adapters_dir = Path(tmp) / "adapters"
        peft_model.save_pretrained(str(adapters_dir))
        return package_bundle(
            out_dir,
            config=config,
            tower=tower,
            thresholds={label: 0.5 for label in CHEXPERT_LABELS},
            tokenizer=tokenizer,
            llm=base_dir,
            adapters={name: adapters_dir / name for name in ("report", "instruct")},
            name=f"tiny-{backbone}-{aligner}",
            version=f"0.0.{seed}",
            int8=int8,
            provenance=Provenance(
                source="randomly initialised tiny test model (inference.tiny)",
                licence="none: random weights",
                intended_use="Software tests only; its reports mean nothing.",
            ),
            lookup_table=NgramTable.build(
                (tokenizer.encode(text + EOS_TOKEN) for text in TOKENIZER_CORPUS), min_count=1
            ),
        )


__all__ = ["build_tiny_bundle", "tiny_config", "tiny_llm", "train_tiny_tokenizer"]
