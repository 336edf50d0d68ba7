"""One prompt builder for training and inference.

A prompt holds, in its first user turn, the image tokens (a placeholder later replaced by
the aligner's embeddings), the predicted positive findings (as RaDialog does), the clinical
indication when known and, in the amend dialog, the current report; then the conversation so
far and the instruction. It goes through the tokenizer's chat template when it has one, and
a plain ``### User: / ### Assistant:`` layout otherwise (MiniGPT-4 / XrayGPT style).

Training and inference both call :meth:`PromptBuilder.encode`, so the token sequence a model
was trained on is exactly the one it sees at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from inference.config import ConversationConfig, PromptConfig
from inference.errors import InferenceError

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """One message of a dialog."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', got {self.role!r}")


@dataclass
class EncodedPrompt:
    """Token ids around the image placeholder, and the answer for training.

    The model input is ``prefix_ids + <image tokens> + suffix_ids`` (+ ``target_ids`` when
    training, where only the target is scored).
    """

    prefix_ids: list[int]
    suffix_ids: list[int]
    target_ids: list[int] = field(default_factory=list)
    text: str = ""


class PromptBuilder:
    """Builds the multimodal prompt for reports and dialog turns.

    Parameters
    ----------
    tokenizer
        The LLM's tokenizer; its chat template is used when it has one.
    config
        Prompt wording.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: PromptConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def context(
        self,
        findings: Sequence[str] | None,
        indication: str | None = None,
        report: str | None = None,
    ) -> str:
        """Text of the study context that opens the first user turn.

        ``findings=None`` leaves the findings line out (image-only prompts, used to train
        linear/MLP projectors on the image tokens alone).
        """
        lines = [f"Image information: {self.config.image_placeholder}."]
        if findings is not None:
            lines.append(f"Predicted findings: {self._listed(findings)}.")
        if indication and indication.strip():
            lines.append(f"Clinical indication: {indication.strip()}")
        if report is not None:
            lines.append(f"Current report: {report.strip()}")
        return "\n".join(lines)

    def first_turn(
        self,
        findings: Sequence[str] | None,
        instruction: str,
        indication: str | None = None,
        report: str | None = None,
    ) -> str:
        """The first user message: the study context, then the instruction.

        With ``prompt.first_turn`` set (an imported model's own wording) the context goes
        into its ``{image}``, ``{findings}`` and ``{context}`` fields.
        """
        template = self.config.first_turn
        if template is None:
            return self.context(findings, indication, report) + "\n" + instruction
        indication = indication.strip() if indication else ""
        own_field = "{indication}" in template
        lines = []
        if indication and not own_field:
            lines.append(self.config.indication_line.format(indication=indication))
        if report is not None:
            lines.append(f"Current report: {report.strip()}\n")
        return template.format(
            image=self.config.image_placeholder,
            findings=self._listed(findings) if findings is not None else "",
            context="".join(lines),
            indication=indication or self.config.no_indication_text,
            instruction=instruction,
        )

    def _listed(self, findings: Sequence[str]) -> str:
        if not findings:
            return self.config.no_findings_text
        return ", ".join(f.lower() for f in findings)

    def messages(
        self,
        *,
        findings: Sequence[str] | None,
        instruction: str,
        indication: str | None = None,
        report: str | None = None,
        history: Sequence[Turn] = (),
    ) -> list[dict[str, str]]:
        """Chat messages (``role``/``content`` dicts) for this prompt.

        Raises
        ------
        ValueError
            For an empty instruction or a history that does not alternate user/assistant
            starting with the user.
        """
        if not instruction.strip():
            raise ValueError("instruction must not be empty")
        turns = [*history, Turn("user", instruction.strip())]
        for index, turn in enumerate(turns):
            expected = "user" if index % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(
                    f"history turn {index} has role {turn.role!r}; turns must alternate "
                    "user/assistant starting with the user"
                )
        messages: list[dict[str, str]] = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        first = self.first_turn(findings, turns[0].content, indication, report)
        messages.append({"role": "user", "content": first})
        messages.extend({"role": t.role, "content": t.content} for t in turns[1:])
        return messages

    def render(self, messages: list[dict[str, str]], answer: str | None = None) -> tuple[str, str]:
        """Return ``(prompt_text, target_text)``; the target is empty without an answer.

        The layout is the config's conversation template when it has one, else the
        tokenizer's chat template, else a plain ``### User:`` layout.
        """
        if self.config.conversation is not None:
            return self._render_conversation(self.config.conversation, messages, answer)
        if self.uses_chat_template:
            prompt = self.tokenizer.apply_chat_template(
                self._for_template(messages), tokenize=False, add_generation_prompt=True
            )
            assert isinstance(prompt, str)
            if answer is None:
                return prompt, ""
            full = self.tokenizer.apply_chat_template(
                self._for_template([*messages, {"role": "assistant", "content": answer}]),
                tokenize=False,
            )
            assert isinstance(full, str)
            if not full.startswith(prompt):
                raise InferenceError(
                    "the chat template renders the generation prompt differently from a "
                    "conversation with an answer; cannot split prompt and target"
                )
            return prompt, full[len(prompt) :]
        parts = [self.tokenizer.bos_token or ""]
        for message in messages:
            label = {"system": "", "user": "### User: ", "assistant": "### Assistant: "}[
                message["role"]
            ]
            end = (self.tokenizer.eos_token or "") if message["role"] == "assistant" else ""
            parts.append(f"{label}{message['content']}{end}\n")
        parts.append("### Assistant:")
        prompt = "".join(parts)
        target = "" if answer is None else f" {answer}{self.tokenizer.eos_token or ''}"
        return prompt, target

    def _for_template(self, messages: list[dict[str, str]]) -> list[dict[str, Any]]:
        """The messages as the chat template reads them: plain strings, or (with
        ``prompt.message_parts``) lists of text parts with an image part where the image
        placeholder is, as MAIRA-2's processor builds them."""
        if not self.config.message_parts:
            return list(messages)
        placeholder = self.config.image_placeholder
        converted: list[dict[str, Any]] = []
        for message in messages:
            parts: list[dict[str, Any]] = []
            for index, text in enumerate(message["content"].split(placeholder)):
                if index:
                    parts.append({"index": index - 1, "text": None, "type": "image"})
                if text:
                    parts.append({"index": None, "text": text, "type": "text"})
            converted.append({"role": message["role"], "content": parts})
        return converted

    def _render_conversation(
        self,
        conversation: ConversationConfig,
        messages: list[dict[str, str]],
        answer: str | None,
    ) -> tuple[str, str]:
        asking, answering = conversation.roles
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        parts = [self.tokenizer.bos_token or "", system, conversation.sep]
        for message in (m for m in messages if m["role"] != "system"):
            is_answer = message["role"] == "assistant"
            role = answering if is_answer else asking
            parts.append(f"{role}: {message['content']}{conversation.separator(is_answer)}")
        parts.append(f"{answering}:")
        target = "" if answer is None else f" {answer}{conversation.separator(True)}"
        return "".join(parts), target

    def encode(
        self,
        *,
        findings: Sequence[str] | None,
        instruction: str,
        indication: str | None = None,
        report: str | None = None,
        history: Sequence[Turn] = (),
        answer: str | None = None,
    ) -> EncodedPrompt:
        """Tokenise a prompt (and, for training, its answer) around the image placeholder.

        Parameters
        ----------
        findings
            Predicted positive findings (labels), in the order to list them; ``None`` leaves
            the findings line out.
        instruction
            The request of this turn (report instruction, correction, question, ...).
        indication
            Clinical indication from the worklist, when known.
        report
            The current report, for amend-dialog turns.
        history
            Earlier turns of the dialog (user first, alternating).
        answer
            Target text for training; ``None`` at inference.
        """
        messages = self.messages(
            findings=findings,
            instruction=instruction,
            indication=indication,
            report=report,
            history=history,
        )
        prompt, target = self.render(messages, answer)
        placeholder = self.config.image_placeholder
        if prompt.count(placeholder) != 1:
            raise InferenceError(
                f"the image placeholder {placeholder!r} must occur exactly once in the prompt; "
                "remove it from instructions, reports and history"
            )
        prefix_ids, suffix_ids = self._encode_around_image(prompt)
        encode = self.tokenizer.encode
        return EncodedPrompt(
            prefix_ids=prefix_ids,
            suffix_ids=suffix_ids,
            target_ids=encode(target, add_special_tokens=False) if target else [],
            text=prompt + target,
        )

    def _encode_around_image(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image placeholder (``prompt.image_tokenization``).

        With a conversation template the BOS token is added as an id, not parsed from the
        text: a SentencePiece tokenizer then begins the text as LLaMA's did (with its
        leading-space piece).
        """
        tokenizer = self.tokenizer
        placeholder = self.config.image_placeholder
        bos_ids: list[int] = []
        bos = tokenizer.bos_token
        if self.config.conversation is not None and bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
            bos_ids = [int(tokenizer.bos_token_id)]  # type: ignore[arg-type]
        elif self.config.add_bos and bos and not prompt.startswith(bos):
            bos_ids = [int(tokenizer.bos_token_id)]  # type: ignore[arg-type]
        mode = self.config.image_tokenization
        if mode == "whole":
            marker = placeholder
            if self.config.image_expansion is not None:
                marker = str(self.config.image_token)
                prompt = prompt.replace(
                    placeholder, self.config.image_expansion.format(image=marker)
                )
            image_id = tokenizer.convert_tokens_to_ids(marker)
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            if not isinstance(image_id, int) or ids.count(image_id) != 1:
                raise InferenceError(
                    f"prompt.image_tokenization 'whole' needs {marker!r} as one token of "
                    "the tokenizer"
                )
            at = ids.index(image_id)
            return bos_ids + ids[:at], ids[at + 1 :]
        before, after = prompt.split(placeholder)
        if mode == "separate_stripped":
            before, after = before.rstrip(), after.lstrip()
        encode = tokenizer.encode
        return (
            bos_ids + encode(before, add_special_tokens=False),
            encode(after, add_special_tokens=False),
        )


__all__ = ["EncodedPrompt", "PromptBuilder", "Role", "Turn"]
