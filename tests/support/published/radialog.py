"""Tiny RaDialog v1 checkpoints in the published formats (docs/model_formats/radialog.md).

The files have the published names, containers, key names and dtypes, at reduced widths and
depths. The keys are written out here from the format notes, not taken from the node's own
modules, so a test that imports them checks the importer's key mapping.

Layout written under ``root`` (as the RaDialog repository expects it after its README's
download steps)::

    biovil_t_image_model_proj_size_128.pt        BioViL-T ImageModel state dict
    pretraining/outputs/stage1_pt_instruct_blip_origlr_img448/checkpoint_4.pth
    findings_classifier/checkpoints/chexpert_train/ChexpertClassifier-epoch=06-val_f1=0.36.ckpt
    checkpoints/vicuna-7b-img-instruct/checkpoint-4800/{adapter_model.bin,adapter_config.json}
    visual_projector.pt                          the 1408-wide projector, replayed (see below)
    vicuna/                                      a tiny Llama with a Vicuna-style tokenizer

RaDialog v1 never saved the projector its Q-Former was trained on (frozen at random
initialisation, dropped by the LAVIS checkpoint saver); a site replays its construction with
RaDialog's own code. ``visual_projector.pt`` stands for that replay's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

#: RaDialog's classifier label order (demo.py), not the node's alphabetical one.
RADIALOG_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)

BIOVIL_FILE = "biovil_t_image_model_proj_size_128.pt"
QFORMER_FILE = "pretraining/outputs/stage1_pt_instruct_blip_origlr_img448/checkpoint_4.pth"
CLASSIFIER_FILE = (
    "findings_classifier/checkpoints/chexpert_train/ChexpertClassifier-epoch=06-val_f1=0.36.ckpt"
)
ADAPTER_DIR = "checkpoints/vicuna-7b-img-instruct/checkpoint-4800"
PROJECTOR_FILE = "visual_projector.pt"
VICUNA_DIR = "vicuna"


@dataclass(frozen=True)
class TinySizes:
    """The reduced sizes (published: 64, (3,4,6,3), 256, 1408, 128, 768, 12, 32, 4096)."""

    stem: int = 8
    blocks: tuple[int, ...] = (2, 1, 1, 1)
    vit: int = 16
    qformer_in: int = 24  # the "1408" projector width
    classifier_proj: int = 12  # the "128" projector width of the classifier
    classifier_hidden: int = 16  # fc1's 512
    qformer_hidden: int = 128  # 768 (head width 64 as in BERT: 2 heads)
    qformer_layers: int = 2
    queries: int = 32
    llm_hidden: int = 64
    llm_intermediate: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    #: The LLM's vocabulary; ``None``: the tokenizer's (Vicuna's is 32000).
    llm_vocab: int | None = None
    lora_r: int = 2


#: RaDialog v1 at its published sizes (random weights), for the GPU benchmark.
FULL_SIZES = TinySizes(
    stem=64, blocks=(3, 4, 6, 3), vit=256, qformer_in=1408, classifier_proj=128,
    classifier_hidden=512, qformer_hidden=768, qformer_layers=12, queries=32, llm_hidden=4096,
    llm_intermediate=11008, llm_layers=32, llm_heads=32, llm_vocab=32000, lora_r=8,
)


def _bn(state: dict[str, torch.Tensor], prefix: str, width: int, gen: torch.Generator) -> None:
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
    state[prefix + "bias"] = 0.1 * torch.randn(width, generator=gen)
    state[prefix + "running_mean"] = 0.1 * torch.randn(width, generator=gen)
    state[prefix + "running_var"] = 0.5 + torch.rand(width, generator=gen)
    state[prefix + "num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)


def _conv(out: int, inp: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(out, inp, k, k, generator=gen) * (2.0 / (inp * k * k)) ** 0.5


def image_model_state(
    sizes: TinySizes, projector: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """An ``ImageModel`` state dict: ResNet (with its ImageNet ``fc``), pooler, projector."""
    state: dict[str, torch.Tensor] = {}
    r = "encoder.encoder."
    state[r + "conv1.weight"] = _conv(sizes.stem, 3, 7, gen)
    _bn(state, r + "bn1.", sizes.stem, gen)
    inplanes = sizes.stem
    for stage, count in enumerate(sizes.blocks, start=1):
        planes = sizes.stem * 2 ** (stage - 1)
        for block in range(count):
            p = f"{r}layer{stage}.{block}."
            state[p + "conv1.weight"] = _conv(planes, inplanes, 1, gen)
            _bn(state, p + "bn1.", planes, gen)
            state[p + "conv2.weight"] = _conv(planes, planes, 3, gen)
            _bn(state, p + "bn2.", planes, gen)
            state[p + "conv3.weight"] = _conv(planes * 4, planes, 1, gen)
            _bn(state, p + "bn3.", planes * 4, gen)
            if block == 0:
                state[p + "downsample.0.weight"] = _conv(planes * 4, inplanes, 1, gen)
                _bn(state, p + "downsample.1.", planes * 4, gen)
            inplanes = planes * 4
    state[r + "fc.weight"] = torch.randn(1000, inplanes, generator=gen) * 0.01
    state[r + "fc.bias"] = torch.zeros(1000)
    state["encoder.backbone_to_vit.weight"] = _conv(sizes.vit, inplanes, 1, gen)
    v = "encoder.vit_pooler."
    state[v + "type_embed"] = torch.randn(2, 1, sizes.vit, generator=gen)
    for block in range(3):
        b = f"{v}blocks.{block}."
        for norm in ("norm1", "norm2"):
            state[b + norm + ".weight"] = torch.ones(sizes.vit)
            state[b + norm + ".bias"] = torch.zeros(sizes.vit)
        for proj in ("proj_q", "proj_k", "proj_v"):
            state[b + f"attn.{proj}.weight"] = torch.randn(sizes.vit, sizes.vit, generator=gen)
        state[b + "attn.proj.weight"] = torch.randn(sizes.vit, sizes.vit, generator=gen)
        state[b + "attn.proj.bias"] = torch.zeros(sizes.vit)
        for fc in ("fc1", "fc2"):
            state[b + f"mlp.{fc}.weight"] = torch.randn(sizes.vit, sizes.vit, generator=gen)
            state[b + f"mlp.{fc}.bias"] = torch.zeros(sizes.vit)
    state[v + "norm_post.weight"] = torch.ones(sizes.vit)
    state[v + "norm_post.bias"] = torch.zeros(sizes.vit)
    state["encoder.missing_previous_emb"] = torch.randn(1, sizes.vit, 1, 1, generator=gen)
    state.update(projector_state(2 * sizes.vit, projector, gen))
    return state


def projector_state(inp: int, width: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``projector.model.{0,1,3}``: 1 x 1 conv, batch norm, 1 x 1 conv with bias."""
    state = {"projector.model.0.weight": _conv(width, inp, 1, gen)}
    _bn(state, "projector.model.1.", width, gen)
    state["projector.model.3.weight"] = _conv(width, width, 1, gen)
    state["projector.model.3.bias"] = 0.1 * torch.randn(width, generator=gen)
    return state


def qformer_state(
    sizes: TinySizes, frozen: dict[str, torch.Tensor], gen: torch.Generator,
    encoder_width: int | None = None,
) -> dict[str, torch.Tensor]:
    """A LAVIS BLIP-2 ``model`` dict (``checkpoint_4.pth``): trained parameters and all
    buffers (those of the frozen visual encoder ``frozen`` too)."""
    h, inter = sizes.qformer_hidden, 4 * sizes.qformer_hidden
    w = encoder_width or sizes.qformer_in
    vocab, positions = 50, 16

    def lin(prefix: str, out: int, inp: int) -> None:
        state[prefix + ".weight"] = torch.randn(out, inp, generator=gen) * inp**-0.5
        state[prefix + ".bias"] = 0.02 * torch.randn(out, generator=gen)

    def norm(prefix: str, width: int) -> None:
        state[prefix + ".weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
        state[prefix + ".bias"] = 0.1 * torch.randn(width, generator=gen)

    state: dict[str, torch.Tensor] = {}
    state["query_tokens"] = 0.5 * torch.randn(1, sizes.queries, h, generator=gen)
    norm("ln_vision", w)
    e = "Qformer.bert.embeddings."
    state[e + "word_embeddings.weight"] = torch.randn(vocab, h, generator=gen)
    state[e + "position_embeddings.weight"] = torch.randn(positions, h, generator=gen)
    norm(e + "LayerNorm", h)
    state[e + "position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    for layer in range(sizes.qformer_layers):
        p = f"Qformer.bert.encoder.layer.{layer}."
        for part in ("query", "key", "value"):
            lin(p + f"attention.self.{part}", h, h)
        lin(p + "attention.output.dense", h, h)
        norm(p + "attention.output.LayerNorm", h)
        if layer % 2 == 0:  # cross_attention_freq 2
            lin(p + "crossattention.self.query", h, h)
            lin(p + "crossattention.self.key", h, w)
            lin(p + "crossattention.self.value", h, w)
            lin(p + "crossattention.output.dense", h, h)
            norm(p + "crossattention.output.LayerNorm", h)
        for ffn in ("", "_query"):
            lin(p + f"intermediate{ffn}.dense", inter, h)
            lin(p + f"output{ffn}.dense", h, inter)
            norm(p + f"output{ffn}.LayerNorm", h)
    c = "Qformer.cls.predictions."
    lin(c + "transform.dense", h, h)
    norm(c + "transform.LayerNorm", h)
    state[c + "bias"] = torch.zeros(vocab)
    state[c + "decoder.weight"] = state[e + "word_embeddings.weight"]
    state[c + "decoder.bias"] = state[c + "bias"]
    lin("vision_proj", 8, h)
    lin("text_proj", 8, h)
    lin("itm_head", 2, h)
    state["temp"] = torch.tensor(0.07)
    # The frozen visual encoder keeps only its buffers (BN statistics) in the file.
    for key, value in frozen.items():
        if key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            state["visual_encoder." + key] = value
    return state


#: Text the tiny tokenizers are trained on: the prompts and a few report sentences.
CORPUS = [
        "A chat between a curious user and an artificial intelligence assistant acting as an "
        "experienced radiologist. USER: Image information: . Predicted Findings: "
        "cardiomegaly, edema, no common findings. You are to act as a radiologist and write "
        "the finding section of a chest x-ray radiology report. ASSISTANT: The heart is "
        "enlarged. There is no pleural effusion or pneumothorax. Lungs are clear.",
    "You are an experienced Doctor, give the following medical scan: <Img>ImageContent</Img>. "
    "###Patient: Describe the given chest x-ray image in detail.###Doctor:",
]


def vicuna_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with LLaMA's special tokens (``<unk>``, ``<s>``, ``</s>``)."""
    corpus = CORPUS * 8
    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=model, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=2048,
    )


def write_sentencepiece_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """LLaMA's tokenizer as Vicuna's folders ship it: ``tokenizer.model`` (SentencePiece BPE
    with byte fallback; ``<unk>``, ``<s>``, ``</s>`` = 0, 1, 2) and ``tokenizer_config.json``
    (``LlamaTokenizer``), no ``tokenizer.json``. Returns it as transformers reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(directory / "tokenizer"),
        vocab_size=400, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        # LLaMA's normaliser: no NFKC, spaces and newlines kept as written
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True,
    )
    (directory / "tokenizer.vocab").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
        "model_max_length": 2048,
    }))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    ))
    return AutoTokenizer.from_pretrained(str(directory))


def write_vicuna(directory: Path, sizes: TinySizes, seed: int) -> None:
    """A tiny Llama in a Hugging Face directory with its tokenizer (the Vicuna base)."""
    torch.manual_seed(seed)
    tokenizer = write_sentencepiece_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=sizes.llm_vocab or len(tokenizer), hidden_size=sizes.llm_hidden,
        intermediate_size=sizes.llm_intermediate, num_hidden_layers=sizes.llm_layers,
        num_attention_heads=sizes.llm_heads, num_key_value_heads=sizes.llm_heads,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=0.2 if sizes.llm_vocab is None else 0.02, rms_norm_eps=1e-6,
    )
    large = sizes.llm_hidden >= 1024
    previous = torch.get_default_dtype()
    if large:  # a 7B model: built and saved in float16, as Vicuna is published
        torch.set_default_dtype(torch.float16)
    try:
        model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(str(directory))


def write_classifier(path: Path, sizes: TinySizes, gen: torch.Generator) -> None:
    """RaDialog's CheXpert classifier as its Lightning 1.6 ``.ckpt`` (v1 and v2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = image_model_state(sizes, sizes.classifier_proj, gen)
    state = {f"model.biovil_encoder.{k}": v for k, v in encoder.items()}
    fc_in = sizes.classifier_proj * 4 * 4
    state["model.fc1.weight"] = (
        torch.randn(sizes.classifier_hidden, fc_in, generator=gen) * fc_in**-0.5
    )
    state["model.fc1.bias"] = 0.1 * torch.randn(sizes.classifier_hidden, generator=gen)
    state["model.fc2.weight"] = torch.randn(14, sizes.classifier_hidden, generator=gen)
    state["model.fc2.bias"] = 0.1 * torch.randn(14, generator=gen)
    state["criterion.pos_weight"] = torch.ones(14)
    torch.save(
        {"epoch": 6, "global_step": 4200, "pytorch-lightning_version": "1.6.5",
         "state_dict": state, "loops": {}, "callbacks": {}, "optimizer_states": [],
         "lr_schedulers": []},
        path,
    )


def write_radialog_v1(root: Path, *, seed: int = 0, sizes: TinySizes | None = None) -> Path:
    """Write the tiny RaDialog v1 files under ``root`` and return it."""
    sizes = sizes or TinySizes()
    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)

    biovil = image_model_state(sizes, 128 // 8, gen)
    torch.save(biovil, root / BIOVIL_FILE)
    replayed = projector_state(2 * sizes.vit, sizes.qformer_in, gen)
    frozen = {k: v for k, v in biovil.items() if not k.startswith("projector.")} | replayed

    qformer = root / QFORMER_FILE
    qformer.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": qformer_state(sizes, frozen, gen),
            "optimizer": {},
            "config": {"model": {"arch": "blip2", "num_query_token": sizes.queries,
                                 "vit_model": "biovil", "freeze_vit": True}},
            "scaler": None,
            "epoch": 4,
        },
        qformer,
    )
    torch.save(replayed, root / PROJECTOR_FILE)

    write_classifier(root / CLASSIFIER_FILE, sizes, gen)

    write_vicuna(root / VICUNA_DIR, sizes, seed)

    adapter = root / ADAPTER_DIR
    adapter.mkdir(parents=True, exist_ok=True)
    lora: dict[str, torch.Tensor] = {}
    d, r = sizes.llm_hidden, sizes.lora_r
    for layer in range(sizes.llm_layers):
        for proj in ("q_proj", "v_proj"):
            p = f"base_model.model.model.layers.{layer}.self_attn.{proj}."
            lora[p + "lora_A.weight"] = torch.randn(r, d, generator=gen) * 0.3
            lora[p + "lora_B.weight"] = torch.randn(d, r, generator=gen) * 0.3
    lora["base_model.model.model.img_proj_layer.weight"] = (
        torch.randn(d, sizes.qformer_hidden, generator=gen) * sizes.qformer_hidden**-0.5
    )
    lora["base_model.model.model.img_proj_layer.bias"] = 0.1 * torch.randn(d, generator=gen)
    torch.save(lora, adapter / "adapter_model.bin")
    (adapter / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "bias": "none", "enable_lora": None,
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "lora_alpha": 2 * r, "lora_dropout": 0.05, "merge_weights": False,
        "modules_to_save": None, "peft_type": "LORA", "r": r,
        "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM",
    }, indent=2, sort_keys=True))
    return root


__all__ = [
    "write_classifier",
    "ADAPTER_DIR", "BIOVIL_FILE", "CLASSIFIER_FILE", "PROJECTOR_FILE", "QFORMER_FILE",
    "FULL_SIZES", "RADIALOG_LABELS", "TinySizes", "VICUNA_DIR", "write_radialog_v1",
]
