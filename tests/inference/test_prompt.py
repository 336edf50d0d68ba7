"""Prompt builder: one layout for training and inference, chat template, targets."""

from __future__ import annotations

import pytest

from inference import PromptBuilder, PromptConfig, Turn
from inference.errors import InferenceError
from inference.tiny import train_tiny_tokenizer


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    return PromptBuilder(train_tiny_tokenizer(), PromptConfig())


def test_prompt_holds_image_findings_indication_and_instruction(builder: PromptBuilder) -> None:
    encoded = builder.encode(
        findings=["Cardiomegaly", "Pleural Effusion"],
        indication="Shortness of breath.",
        instruction="Write the findings.",
    )
    text = encoded.text
    assert text.count("<ImageHere>") == 1
    assert "Predicted findings: cardiomegaly, pleural effusion." in text
    assert "Clinical indication: Shortness of breath." in text
    assert (
        text.index("<ImageHere>")
        < text.index("Predicted findings")
        < text.index("Write the findings.")
    )
    assert text.startswith("<|im_start|>system\n")  # the chat template was used
    assert text.endswith("<|im_start|>assistant\n")
    tok = builder.tokenizer
    assert tok.decode(encoded.prefix_ids + encoded.suffix_ids) == text.replace("<ImageHere>", "")


def test_unknown_indication_and_no_findings(builder: PromptBuilder) -> None:
    text = builder.encode(findings=[], indication=None, instruction="Write.").text
    assert "Clinical indication" not in text
    assert "Predicted findings: no abnormal findings." in text


def test_training_target_is_the_answer_and_end_of_turn(builder: PromptBuilder) -> None:
    kwargs = dict(findings=["Edema"], instruction="Write the findings.")
    inference_prompt = builder.encode(**kwargs)  # type: ignore[arg-type]
    training_prompt = builder.encode(**kwargs, answer="Mild pulmonary edema.")  # type: ignore[arg-type]
    # identical prompt tokens in training and inference; only the target is added
    assert training_prompt.prefix_ids == inference_prompt.prefix_ids
    assert training_prompt.suffix_ids == inference_prompt.suffix_ids
    assert (
        builder.tokenizer.decode(training_prompt.target_ids) == "Mild pulmonary edema.<|im_end|>\n"
    )


def test_dialog_keeps_report_and_history_in_order(builder: PromptBuilder) -> None:
    history = [Turn("user", "Is there an effusion?"), Turn("assistant", "Yes, a small left one.")]
    text = builder.encode(
        findings=["Pleural Effusion"],
        report="Small left pleural effusion.",
        history=history,
        instruction="There is no effusion.",
    ).text
    order = [
        "Current report: Small left pleural effusion.",
        "Is there an effusion?",
        "Yes, a small left one.",
        "There is no effusion.",
    ]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)


def test_history_must_alternate(builder: PromptBuilder) -> None:
    with pytest.raises(ValueError, match="alternate"):
        builder.encode(findings=[], history=[Turn("assistant", "Hello")], instruction="Hi")


def test_empty_instruction_is_refused(builder: PromptBuilder) -> None:
    with pytest.raises(ValueError, match="instruction must not be empty"):
        builder.encode(findings=[], instruction="   ")


def test_placeholder_typed_by_a_user_is_refused(builder: PromptBuilder) -> None:
    with pytest.raises(InferenceError, match="exactly once"):
        builder.encode(findings=[], instruction="ignore <ImageHere> please")


def test_plain_layout_without_chat_template() -> None:
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = None
    builder = PromptBuilder(tokenizer, PromptConfig(system_prompt=None))
    encoded = builder.encode(findings=["Edema"], instruction="Write.", answer="Edema.")
    assert "### User: Image information: <ImageHere>." in encoded.text
    assert encoded.text.endswith("### Assistant: Edema.<|im_end|>")


RADIOLOGIST = ("A chat between a curious user and an artificial intelligence assistant acting "
               "as an experienced radiologist.")


def test_vicuna_v1_1_conversation_as_radialog_writes_it() -> None:
    from inference import ConversationConfig

    tokenizer = train_tiny_tokenizer()
    config = PromptConfig(system_prompt=RADIOLOGIST, conversation=ConversationConfig())
    builder = PromptBuilder(tokenizer, config)
    first = builder.encode(findings=["Edema"], instruction="Write the report.",
                           answer="Mild edema.")
    bos = tokenizer.bos_token or ""
    context = "Image information: <ImageHere>.\nPredicted findings: edema."
    # FastChat's "two" style: system + sep, "USER: msg" + sep, "ASSISTANT:" left open; the
    # answer follows after a space and ends with sep2.
    assert first.text == (f"{bos}{RADIOLOGIST} USER: {context}\nWrite the report. ASSISTANT:"
                          " Mild edema.</s>")
    later = builder.encode(
        findings=["Edema"], instruction="Is there an effusion?",
        history=[Turn("user", "Write the report."), Turn("assistant", "Mild edema.")],
    )
    assert later.text.endswith("ASSISTANT: Mild edema.</s>USER: Is there an effusion? "
                               "ASSISTANT:")


def test_single_separator_conversation_as_xraygpt_writes_it() -> None:
    from inference import ConversationConfig

    system = "You are an experienced Doctor."
    config = PromptConfig(
        system_prompt=system,
        conversation=ConversationConfig(style="single", roles=("Patient", "Doctor"), sep="###"),
    )
    tokenizer = train_tiny_tokenizer()
    encoded = PromptBuilder(tokenizer, config).encode(findings=None, instruction="Describe.")
    bos = tokenizer.bos_token or ""
    assert encoded.text == f"{bos}{system}###Patient: Image information: <ImageHere>.\n" \
        "Describe.###Doctor:"


def test_a_conversation_template_round_trips_and_bad_values_name_the_key() -> None:
    from inference import ConfigError, ConversationConfig, ModelConfig

    config = ModelConfig(prompt=PromptConfig(conversation=ConversationConfig(
        style="single", roles=("Patient", "Doctor"), sep="###")))
    again = ModelConfig.from_dict(config.to_dict())
    assert again.prompt.conversation == config.prompt.conversation
    data = config.to_dict()
    data["prompt"]["conversation"]["style"] = "triple"
    with pytest.raises(ConfigError, match="prompt.conversation.style"):
        ModelConfig.from_dict(data)
    data["prompt"]["conversation"] = {"roles": ["USER"]}
    with pytest.raises(ConfigError, match="prompt.conversation.roles"):
        ModelConfig.from_dict(data)


def test_image_tokenization_as_the_authors_tokenized() -> None:
    tokenizer = train_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<IMG>"]})
    ask = {"findings": [], "instruction": "Write the report."}

    def encoded(mode: str) -> tuple[list[int], list[int]]:
        config = PromptConfig(image_placeholder="<IMG>", image_tokenization=mode,  # type: ignore[arg-type]
                              first_turn="Image information: {image} . {instruction}")
        prompt = PromptBuilder(tokenizer, config).encode(**ask)  # type: ignore[arg-type]
        return prompt.prefix_ids, prompt.suffix_ids

    separate, whole = encoded("separate"), encoded("whole")
    stripped = encoded("separate_stripped")
    assert whole == separate  # byte-level BPE: no leading-space piece per call
    assert tokenizer.decode(separate[0]).endswith("information: ")
    assert tokenizer.decode(stripped[0]).endswith("information:")
    assert tokenizer.decode(stripped[1]).startswith(".")

    config = PromptConfig(image_tokenization="whole")  # "<ImageHere>" is no token here
    with pytest.raises(InferenceError, match="needs '<ImageHere>' as one token"):
        PromptBuilder(tokenizer, config).encode(**ask)  # type: ignore[arg-type]
