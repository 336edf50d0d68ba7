"""XrayGPT (github.com/mbzuai-oryx/XrayGPT) as a node bundle.

XrayGPT's README and paper speak of a MedCLIP image encoder, but no code path loads MedCLIP:
``Blip2Base.init_vision_encoder`` asserts ``eva_clip_g`` and builds BLIP-2's EVA ViT-g. The
importer follows the code (docs/models.md):

=========================================  ================================================
published file                             bundle
=========================================  ================================================
``eva_vit_g.pth`` (LAVIS, flat)            ``vision.onnx``: transformers' ``Blip2VisionModel``
                                           with the file's blocks but the last (BLIP-2 reads
                                           the penultimate: 39 of 40)
``blip2_pretrained_flant5xxl.pth``         ``vision.onnx``: ``ln_vision`` (as the vision
                                           model's final norm), the Q-Former, the queries
``checkpoint_0.pth`` (XrayGPT stage 2)     ``vision.onnx``: ``llama_proj`` (the aligner's
                                           projection); its buffers are not needed
``Vicuna_Radiology_fp16/`` (``--llm``)     referenced by path and checksummed, not copied
=========================================  ================================================

Sizes are read from the tensors; EVA's and BERT's head widths (88 and 64) are not stored and
are those of ``create_eva_vit_g`` and bert-base. ``ln_vision`` is a LayerNorm with eps 1e-5
in XrayGPT and runs here as the vision model's final norm with EVA's eps 1e-6 (a relative
difference of about 1e-6 in the image features). XrayGPT has no findings head: the prompt
has no findings line and the SR's codes come from the report text. The prompt is its demo's
conversation (``CONV_VISION``: ``###`` separators, Patient/Doctor), greedy instead of the
demo's sampling, stopped at ``###``.
"""

from __future__ import annotations

from pathlib import Path

from inference.bundle import Provenance
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
from inference.errors import CheckpointError
from inference.importers.blip2 import convert_eva_vit, convert_qformer
from inference.importers.checkpoints import (
    check_shape,
    find_file,
    hf_config,
    load_checkpoint,
    load_tokenizer,
    load_weights,
    need,
    state_dict,
    write_imported_bundle,
)
from inference.vision import VisionTower

EVA_NAME = "eva_vit_g.pth"
QFORMER_NAME = "blip2_pretrained_flant5xxl.pth"
STAGE2_GLOB = "checkpoint_*.pth"
SYSTEM = (
    "You are an experienced Doctor, give the following medical scan: <Img>ImageContent</Img>. "
    "You will be able to see the medical scan once I provide it to you. Please answer my "
    "questions."
)
#: One of XrayGPT's alignment prompts (prompts/alignment.txt).
REPORT_INSTRUCTION = "Describe the given chest x-ray image in detail."
#: OpenAI CLIP's normalisation (Blip2ImageEvalProcessor).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_PROVENANCE = Provenance(
    source="XrayGPT (github.com/mbzuai-oryx/XrayGPT), imported by dicom_node model import",
    licence=(
        "XrayGPT code and checkpoints: CC BY-NC-SA 4.0 (README); its Vicuna: LLaMA licence "
        "terms; EVA ViT-g and BLIP-2 weights: Salesforce LAVIS (weight terms unverified)"
    ),
    intended_use="Research use only; not a medical device. Every draft needs a radiologist.",
)


def xraygpt_config(
    vision: dict[str, object], qformer: dict[str, int], queries: int, llm_width: int
) -> ModelConfig:
    """The bundle config of an XrayGPT import."""
    image_size = int(vision["image_size"])  # type: ignore[call-overload]
    return ModelConfig(
        preprocess=PreprocessConfig(image_size=image_size, resize_mode="stretch", voi="dicom",
                                    channels=3, mean=CLIP_MEAN, std=CLIP_STD),
        vision=VisionConfig(backbone={"model_type": "blip_2_vision_model", **vision}),
        classifier=ClassifierConfig(kind="none", labels=()),
        aligner=AlignerConfig(kind="qformer", num_query_tokens=queries, qformer=dict(qformer)),
        llm_hidden_size=llm_width,
        prompt=PromptConfig(
            system_prompt=SYSTEM,
            image_placeholder="<ImageHere>",
            report_instruction=REPORT_INSTRUCTION,
            first_turn="<Img>{image}</Img> {context}{instruction}",
            conversation=ConversationConfig(style="single", roles=("Patient", "Doctor"),
                                            sep="###", sep2=""),
        ),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1, stop_strings=("###",)),
    )


def import_xraygpt(
    source: Path,
    out: Path,
    *,
    llm: Path,
    name: str = "xraygpt",
    version: str = "1",
    provenance: Provenance = DEFAULT_PROVENANCE,
) -> Path:
    """Turn an XrayGPT download into a bundle at ``out`` (written whole, or not at all).

    Parameters
    ----------
    source
        The folder with ``eva_vit_g.pth``, ``blip2_pretrained_flant5xxl.pth`` and XrayGPT's
        stage-2 ``checkpoint_*.pth``.
    out
        The new bundle directory (must not exist).
    llm
        The fine-tuned Vicuna folder (``Vicuna_Radiology_fp16``), referenced, not copied.

    Raises
    ------
    CheckpointError
        For a missing file or key, or a shape that does not fit (named).
    """
    eva_path = find_file(source, [f"**/{EVA_NAME}"], "the EVA ViT-g weights")
    qformer_path = find_file(source, [f"**/{QFORMER_NAME}"], "the BLIP-2 Q-Former")
    stage2_path = find_file(source, [f"**/{STAGE2_GLOB}"],
                            "XrayGPT's stage-2 checkpoint (llama_proj)")
    eva = state_dict(load_checkpoint(eva_path), eva_path)
    blip2 = state_dict(load_checkpoint(qformer_path), qformer_path, "model")
    stage2 = state_dict(load_checkpoint(stage2_path), stage2_path, "model")

    vision_weights, vision_kwargs = convert_eva_vit(eva, eva_path)
    qformer, qformer_kwargs, feature_width = convert_qformer(blip2, qformer_path)
    if feature_width != vision_kwargs["hidden_size"]:
        raise CheckpointError(
            f"{qformer_path}: the Q-Former attends to {feature_width}-wide features, "
            f"{eva_path.name} gives {vision_kwargs['hidden_size']}"
        )
    for n in ("weight", "bias"):
        ln = need(blip2, f"ln_vision.{n}", qformer_path)
        check_shape(ln, (feature_width,), f"ln_vision.{n}", qformer_path)
        vision_weights[f"post_layernorm.{n}"] = ln
    projection = {n: need(stage2, f"llama_proj.{n}", stage2_path) for n in ("weight", "bias")}
    llm_width, hidden = projection["weight"].shape
    if hidden != qformer_kwargs["hidden_size"]:
        raise CheckpointError(
            f"{stage2_path}: key 'llama_proj.weight' takes {hidden} inputs, the Q-Former "
            f"gives {qformer_kwargs['hidden_size']}"
        )
    base = hf_config(llm)
    if base.hidden_size != llm_width:
        raise CheckpointError(
            f"{stage2_path}: key 'llama_proj.weight' projects to {llm_width}, the LLM in {llm} "
            f"is {base.hidden_size} wide"
        )
    query_tokens = need(blip2, "query_tokens", qformer_path)
    config = xraygpt_config(vision_kwargs, qformer_kwargs, int(query_tokens.shape[1]),
                            int(llm_width))
    tower = VisionTower(config).eval()
    weights = {f"encoder.backbone.{k}": v for k, v in vision_weights.items()}
    weights["aligner.query_tokens"] = query_tokens
    weights |= {f"aligner.qformer.{k}": v for k, v in qformer.items()}
    weights |= {f"aligner.projection.{n}": v for n, v in projection.items()}
    origins = {"encoder.backbone.post": qformer_path, "encoder.": eva_path,
               "aligner.projection.": stage2_path, "aligner.": qformer_path}
    load_weights(tower, weights,
                 lambda key: next(p for prefix, p in origins.items() if key.startswith(prefix)))
    return write_imported_bundle(
        out, config=config, tower=tower, tokenizer=load_tokenizer(llm, pad="eos"), llm=llm,
        provenance=provenance, name=name, version=version,
    )


__all__ = ["REPORT_INSTRUCTION", "SYSTEM", "import_xraygpt", "xraygpt_config"]
