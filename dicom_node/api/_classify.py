"""The rule that tells a reader's question from a request to change the report.

Radiologists type short, casual messages; a few word rules sort them well enough, and a
wrong guess costs little: a question never changes the report, and a proposal has to be
accepted before it does. The rule, on the lower-cased message:

1. With ``intent="question"`` (``dicom_node ask``) the message is a question.
2. A polite request prefix ("please", "can you", "could you", "would you", ...) marks a
   request; the prefix is removed and the rest is classified by steps 4-6, then step 3's
   opening words only (so "can you remove the effusion?" is a correction, "could you explain
   the findings" a question).
3. Otherwise, unless ``intent="amend"`` (``dicom_node amend``), a message that ends with
   ``?`` or opens with a question word (is, are, does, what, where, how, any, ...) or with
   explain, describe, list, tell me, define is a **question**. "Do not ..." is not.
4. Words of plain language (easy, easier, simple, plain, lay terms, patient-friendly,
   jargon, understandable) -> **easy_language**.
5. Words of summarising (summarise/summarize/summary, shorten, shorter, brief, concise,
   one sentence/line, tl;dr) -> **summary**.
6. Words of rewording (rewrite, rephrase, reword, restructure, reformulate, translate,
   wording, formal, style) -> **rewrite**.
7. Anything else is a **correction** ("there is no effusion", "the heart is enlarged",
   "remove the last sentence").
"""

from __future__ import annotations

import re
from typing import Literal

from dicom_node.store.dialog import MessageKind

#: How the client wants a message taken: classified, always a question, or always a request.
Intent = Literal["auto", "question", "amend"]

_POLITE = re.compile(
    r"^(?:please|pls|kindly|can you|could you|would you|will you|can u|could u)\b[\s,:]*"
)
_QUESTION_START = re.compile(
    r"^(?:is|are|was|were|do|does|did|can|could|should|would|will|has|have|had|what|"
    r"where|which|who|whom|whose|why|how|when|any|explain|describe|list|tell me|define)\b"
)
_NOT_QUESTION_START = re.compile(r"^(?:do not|don't|does not|doesn't)\b")
_EASY = re.compile(
    r"\b(?:easy|easier|simple|simpler|simplify|simplified|plain|lay|layman|laymen|"
    r"patient[- ]friendly|understandable|jargon)\b"
)
_SUMMARY = re.compile(
    r"\b(?:summari[sz]e|summari[sz]ed|summary|shorten|shorter|brief|briefly|concise|"
    r"tl;?dr|one sentence|one line)\b"
)
_REWRITE = re.compile(
    r"\b(?:rewrite|re-write|rephrase|reword|restructure|reformulate|translate|wording|"
    r"formal|style)\b"
)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _opens_as_question(text: str) -> bool:
    return bool(_QUESTION_START.match(text)) and not _NOT_QUESTION_START.match(text)


def _request_kind(text: str) -> MessageKind | None:
    if _EASY.search(text):
        return MessageKind.EASY_LANGUAGE
    if _SUMMARY.search(text):
        return MessageKind.SUMMARY
    if _REWRITE.search(text):
        return MessageKind.REWRITE
    return None


def classify_message(text: str, intent: Intent = "auto") -> MessageKind:
    """Classify a reader's message as a question or a kind of revision request.

    Parameters
    ----------
    text
        The message as typed.
    intent
        ``"auto"`` classifies by the rule in this module's docstring; ``"question"`` always
        gives :attr:`MessageKind.QUESTION`; ``"amend"`` never does (a request whose kind is
        still classified: correction, rewrite, summary or easy language).

    Returns
    -------
    MessageKind
        The kind of the message.

    Raises
    ------
    ValueError
        For an unknown `intent`.

    Examples
    --------
    >>> classify_message("Is the heart enlarged?")
    <MessageKind.QUESTION: 'question'>
    >>> classify_message("there is no effusion")
    <MessageKind.CORRECTION: 'correction'>
    >>> classify_message("Can you make it easier to read?")
    <MessageKind.EASY_LANGUAGE: 'easy_language'>
    """
    if intent not in ("auto", "question", "amend"):
        raise ValueError(f"intent must be 'auto', 'question' or 'amend', got {intent!r}")
    if intent == "question":
        return MessageKind.QUESTION
    normalised = _normalise(text)
    polite = _POLITE.match(normalised)
    if polite:
        body = normalised[polite.end() :]
        kind = _request_kind(body)
        if kind is not None:
            return kind
        if intent == "auto" and _opens_as_question(body):
            return MessageKind.QUESTION
        return MessageKind.CORRECTION
    if intent == "auto" and (normalised.endswith("?") or _opens_as_question(normalised)):
        return MessageKind.QUESTION
    return _request_kind(normalised) or MessageKind.CORRECTION


__all__ = ["Intent", "classify_message"]
