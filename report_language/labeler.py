"""A rule-based CheXpert-style labeler for chest X-ray report text.

The labeler follows the three stages of the CheXpert labeler (Irvin et al. 2019,
``stanfordmlgroup/chexpert-labeler``): **mention extraction** with phrase lists per
observation, **mention classification** into positive, negative or uncertain, and
**aggregation** over the report. CheXpert classifies mentions with NegBio's patterns over a
dependency parse; this module replaces the parse with scoped trigger phrases (NegEx style),
applied sentence by sentence, in CheXpert's order:

1. pre-negation uncertainty ("cannot be excluded", "no new", "no definite") -> uncertain;
2. negation ("no", "without", "no evidence of", "negative for", "free of", "X has resolved",
   "X is not seen", "X is normal") -> negative;
3. uncertainty ("may represent", "possible", "likely", "suggestive of", "concerning for",
   "X versus Y", "X or Y") -> uncertain;
4. otherwise positive. "Stable", "unchanged" and "persistent" leave a finding positive.

A trigger reaches a mention in its direction (forward: the mention follows the trigger;
backward: the mention precedes it) when at most ``max_words`` words lie between them and no
clause boundary ("but", "however", "which", ...) separates them. Forward scopes also end at a
verb ("is", "are", "has", ...) so that "no effusion is seen and the heart is enlarged" does not
negate the heart. Rules for special mentions, as in CheXpert:

* **Neutral anatomy** ("heart size", "the heart", "cardiac silhouette", "mediastinum",
  "mediastinal contours") is positive unless negated ("heart size is normal",
  "normal cardiac silhouette", "mediastinum is not widened") or hedged; described as stable
  ("heart size is unchanged", "stable cardiomediastinal silhouette") with no word of
  enlargement nearby, it is uncertain.
* **Hedged mentions** of edema ("vascular congestion", "pulmonary congestion",
  "vascular prominence", "indistinctness") are uncertain unless negated.
* "CHF" or "heart failure", positive or uncertain, also adds an uncertain Cardiomegaly mention.
* "Lungs are clear" mentions no observation (CheXpert has no such phrase); under the
  binary rule used for evaluation absent and negative are the same.

Aggregation per observation over all its mentions: positive wins over uncertain, uncertain wins
over negative. (CheXpert's code returns uncertain for the rare triple negative + uncertain +
positive; here positive wins, as for every pair.) **No Finding** is ``1.0`` when no mention of
any observation other than Support Devices, nor of another abnormality (emphysema, scoliosis,
granuloma, ...: CheXpert's ``no_finding`` phrases), is positive or uncertain; otherwise it is
``None``. A report with no mention at all is therefore No Finding, as in CheXpert.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN

__all__ = [
    "Mention",
    "extract_mentions",
    "label_report",
    "label_reports",
    "split_sentences",
]

MentionKind = Literal["finding", "neutral", "hedged", "other"]
Status = Literal["positive", "negative", "uncertain"]
Direction = Literal["forward", "backward", "both"]

# --------------------------------------------------------------------------------------------
# Mention vocabulary. Each entry is a regular expression matched at a word start in the
# cleaned, lower-case sentence; ``\w*`` marks CheXpert's prefix phrases ("atelecta").
# --------------------------------------------------------------------------------------------

#: Phrases whose mention is a finding: positive unless negated or hedged.
MENTION_PHRASES: Final[Mapping[str, tuple[str, ...]]] = {
    "Atelectasis": (r"atelecta\w*", r"collaps\w*"),
    "Cardiomegaly": (
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarged heart",
        r"enlargement of the (?:heart|cardiac silhouette)",
    ),
    "Consolidation": (r"consolidat\w*",),
    "Edema": (r"o?edema\w*", r"heart failure", r"chf"),
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastinal (?:widening|enlargement)",
        r"widened (?:cardio)?mediastinum",
    ),
    "Fracture": (r"fractur\w*",),
    "Lung Lesion": (
        r"mass(?:es)?",
        r"nodular (?:density|densities|opacity|opacities|opacification)",
        r"nodules?",
        r"lumps?",
        r"cavitary lesions?",
        r"carcinoma\w*",
        r"neoplasm\w*",
        r"tumou?rs?",
        r"(?:lung|pulmonary) lesions?",
    ),
    "Lung Opacity": (
        r"opaci\w*",
        r"decreased translucency",
        r"increased density",
        r"air[- ]?space (?:disease|process)",
        r"infiltrat\w*",
        r"interstitial (?:markings?|pattern|lung disease|abnormality)",
        r"reticular (?:pattern|markings?)",
        r"reticulation",
        r"parenchymal scarring",
        r"peribronchial thickening",
        r"wall thickening",
        r"scar\w*",
    ),
    "Pleural Effusion": (r"pleural fluid", r"effusions?", r"hydrothorax"),
    "Pleural Other": (
        r"pleural thickening",
        r"fibrosis",
        r"fibrothorax",
        r"pleural scar\w*",
        r"pleuro-?parenchymal scar\w*",
        r"pleural[- ]parenchymal scar\w*",
        r"pleuro-?pericardial scar\w*",
        r"pleural plaques?",
        r"pleural calcifications?",
        r"pleural abnormalit(?:y|ies)(?: other than (?:an? )?(?:pleural )?effusions?)?",
    ),
    "Pneumonia": (r"(?:broncho)?pneumonias?", r"infections?", r"infectious(?: process)?"),
    "Pneumothorax": (r"pneumothorax", r"pneumothoraces", r"hydropneumothorax"),
    "Support Devices": (
        r"pacers?",
        r"pacemakers?",
        r"lines?",
        r"picc",
        r"tubes?",
        r"valves?",
        r"catheters?",
        r"hardware",
        r"arthroplast\w*",
        r"markers?",
        r"icd",
        r"defibrillators?",
        r"devices?",
        r"drains?",
        r"plates?",
        r"screws?",
        r"cannula\w*",
        r"apparatus",
        r"coils?",
        r"equipment",
        r"mediport",
        r"port-?a-?cath",
        r"wires?",
        r"clips?",
        r"stents?",
        r"ett",
    ),
}

#: Normal anatomy named in order to describe it ("heart size is normal"): positive unless
#: negated or hedged, uncertain when only described as stable (CheXpert's added rules).
NEUTRAL_PHRASES: Final[Mapping[str, tuple[str, ...]]] = {
    "Cardiomegaly": (
        r"heart size",
        r"size of the heart",
        r"heart",
        r"cardiac (?:size|silhouettes?|shadow|contours?)",
        r"cardiac and mediastinal (?:silhouettes?|contours?)",
    ),
    "Enlarged Cardiomediastinum": (
        r"(?:cardio)?mediastinum",
        r"(?:cardio)?mediastinal (?:silhouettes?|contours?|configuration|width)",
        r"pericardial silhouette",
        r"contours?",
    ),
}

#: Mentions that CheXpert always labels uncertain unless negated.
HEDGED_PHRASES: Final[Mapping[str, tuple[str, ...]]] = {
    "Edema": (
        r"(?:pulmonary )?vascular congestion",
        r"pulmonary congestion",
        r"(?:pulmonary )?vascular prominence",
        r"(?:vascular )?indistinctness",
    ),
}

#: Other abnormalities: a positive or uncertain mention rules out No Finding
#: (CheXpert's ``phrases/mention/no_finding.txt``).
OTHER_FINDING_PHRASES: Final[tuple[str, ...]] = (
    r"emphysema\w*", r"blunt\w*", r"density", r"densities", r"elevat\w*", r"eventration",
    r"scoliosis", r"degenera\w*", r"calcifi\w*", r"hyperinfla\w*", r"bronchospasm",
    r"asthma", r"hernia\w*", r"copd", r"interstitial markings", r"plaques?",
    r"osteophyt\w*", r"aortic disease", r"bronchiolitis", r"airways? disease",
    r"thickening", r"cephalization", r"aspiration", r"bullae", r"bullous", r"contusions?",
    r"atherosclero\w*", r"osteopenia", r"metasta\w*", r"granulomas?", r"pneumomediastinum",
    r"pneumoperitoneum", r"osteodystrophy", r"cuffing", r"irregular lucency", r"inflam\w*",
    r"hypertension", r"prominen\w*", r"kyphosis", r"hyperexpan\w*", r"bullets?",
    r"reticula\w*", r"thoracentesis", r"bronchitis", r"volume loss", r"deformity",
    r"hemorrhage", r"hematoma", r"radiopaque", r"aerophagia", r"arthropathy",
    r"tracheostomy", r"bronchiectasis", r"tortuous", r"tortuosity",
)

#: Phrases that look like a mention but are not one (a mention overlapping one is dropped).
UNMENTION_PHRASES: Final[Mapping[str, tuple[str, ...]]] = {
    "Cardiomegaly": (r"heart (?:failure|borders?|valves?)",),
    "Lung Lesion": (r"calcified nodul\w*", r"massive", r"massengale", r"mass effect"),
    "Lung Opacity": (r"pleural scar\w*",),
    "Pleural Effusion": (
        r"pericardial effusions?",
        r"other than (?:an? )?(?:pleural )?effusions?",
    ),
    "Enlarged Cardiomediastinum": (
        r"(?:hemi)?diaphragm\w* contours?",
        r"contours? of the (?:hemi)?diaphragm\w*",
    ),
    "Support Devices": (
        r"plate-?like",
        r"(?:pleural|junction|septal|kerley b?|paraspinal|paratracheal|azygoesophageal|"
        r"fissure|skin(?: ?fold)?|b|fine|linear) lines?",
        r"lines? of (?:the )?(?:pleura|fissure)",
        r"valve calcifications?",
    ),
}

#: Text right before a cardiac or mediastinal mention that makes it a position
#: ("tube projects over the mediastinum", "opacity behind the heart"), not a mention.
POSITIONAL_PREFIX: Final[str] = (
    r"(?:over|overlying|overlies|overlie|projecting over|projects over|in|into|within|"
    r"behind|through|along|across)\s+the\s+(?:(?:superior|inferior|left|right|upper|lower|"
    r"mid|anterior|posterior)\s+)?$"
)

#: Labels whose neutral mentions are checked against :data:`POSITIONAL_PREFIX`.
POSITIONAL_LABELS: Final[frozenset[str]] = frozenset({"Cardiomegaly",
                                                      "Enlarged Cardiomediastinum"})

# --------------------------------------------------------------------------------------------
# Trigger rules.
# --------------------------------------------------------------------------------------------


class Rule(NamedTuple):
    """A trigger phrase and the mentions it reaches.

    Parameters
    ----------
    pattern
        Regular expression for the trigger in the cleaned, lower-case sentence.
    direction
        ``"forward"``: reaches mentions after the trigger; ``"backward"``: mentions before it;
        ``"both"``.
    max_words
        Most words allowed between trigger and mention.
    stop_at_comma
        Whether a comma between trigger and mention ends the scope.
    """

    pattern: str
    direction: Direction
    max_words: int
    stop_at_comma: bool = False


_EXCLUDE_VERB = r"(?:exclude|rule out)"
_SEEN = (r"(?:seen|visuali[sz]ed|identified|demonstrated|present|evident|appreciated|detected|"
         r"noted|visible|apparent|identifiable|appreciable|shown|depicted)")
_NORMAL = (r"(?:normal|unremarkable|within normal limits|(?:of |a )?normal size|normal in size|"
           r"top[- ]normal|upper normal|(?:at )?the upper limits? of normal|"
           r"not (?:enlarged|widened|dilated|increased))")
_COPULA = r"(?:is|are|was|were|appears?|appeared|remains?|remained|looks?|seems?)"
_CLAUSE_END = r"(?=\s*(?:[,:]|$|\b(?:but|and|given|in|at|on|with|due|although|though)\b))"

#: Checked first: uncertainty phrased with a negation (CheXpert's pre-negation uncertainty).
PRE_NEGATION_UNCERTAINTY_RULES: Final[tuple[Rule, ...]] = (
    Rule(rf"\b(?:cannot|can not|can't|could not|couldn't|unable to|does not|doesn't|not|"
         rf"difficult to)\s+(?:\w+ly\s+)?{_EXCLUDE_VERB}\b", "forward", 8),
    Rule(r"\b(?:cannot|can not|can't|could not|may not|might not|has not|have not|not)\s+"
         r"(?:be\s+|been\s+)?(?:\w+ly\s+)?(?:excluded|ruled out)\b", "backward", 8),
    Rule(r"\bdifficult to (?:exclude|rule out)\b", "backward", 8),
    Rule(r"\b(?:no|without)\s+(?:new|definite|definitive|obvious|convincing|clear)\b",
         "forward", 12),
)

#: Negation triggers.
NEGATION_RULES: Final[tuple[Rule, ...]] = (
    Rule(r"\bno\b", "forward", 12),
    Rule(r"\bwithout\b", "forward", 12),
    Rule(r"\bnot\b", "forward", 3, stop_at_comma=True),
    Rule(r"\b(?:neither|nor|never)\b", "forward", 6),
    Rule(r"\bnegative for\b", "forward", 12),
    Rule(r"\b(?:free|clear) of\b", "forward", 12),
    Rule(r"\babsen(?:ce|t)(?: of)?\b", "forward", 12),
    Rule(r"\b(?:resolution|removal|disappearance|clearing) of\b", "forward", 12),
    Rule(r"\b(?:resolved|removed|cleared)\b", "forward", 4, stop_at_comma=True),
    Rule(r"\brather than\b", "forward", 6),
    Rule(r"\b(?:to\s+)?(?:exclude|rule out|ruling out|ruled out)\b", "forward", 6),
    Rule(r"\bhistory of\b", "forward", 6),
    Rule(r"\b(?:normal|unremarkable)\b", "forward", 3, stop_at_comma=True),
    Rule(r"\b(?:has |have )?(?:since |now |completely |largely |nearly |almost )?"
         r"(?:resolved|cleared)\b", "backward", 8),
    Rule(r"\b(?:with\s+)?(?:interval\s+|complete\s+)?resolution\b", "backward", 3),
    Rule(rf"\b(?:(?:is|are|was|were|has been|have been)\s+)?(?:no longer|not)\s+{_SEEN}\b",
         "backward", 8),
    Rule(r"\b(?:(?:has|have)\s+(?:since\s+)?been\s+)?(?:removed|withdrawn|explanted)\b",
         "backward", 8),
    Rule(r"\b(?:is|are|was|were)\s+(?:now\s+)?absent\b", "backward", 8),
    Rule(rf"\b{_COPULA}\s+(?:(?:now|otherwise|again|still|essentially|relatively|overall|"
         rf"grossly|also|likewise|stably)\s+)?{_NORMAL}\b", "backward", 6),
    Rule(rf"\b{_NORMAL}\b", "backward", 0),
    Rule(r"\b(?:(?:is|are|was|were|has been|have been)\s+)?(?:excluded|ruled out)\b",
         "backward", 6),
)

#: Uncertainty triggers (after negation, CheXpert's post-negation uncertainty).
UNCERTAINTY_RULES: Final[tuple[Rule, ...]] = (
    Rule(r"\b(?:may|might|could|would)\b", "forward", 6),
    Rule(r"\b(?:possible|possibly|probable|probably|likely|unlikely|presumed|presumably|"
         r"presumptive|questionable|question of|questioned|suspect|suspected|suspicious|"
         r"suspicion|concerning|concern|worrisome|suggestive|suggests?|suggesting|"
         r"suggestion|equivocal|indeterminate|borderline|differential(?: diagnosis)?|"
         r"considerations?|consider|considered|potential|potentially|cannot be distinguished|"
         r"raising the possibility|possibility)\b(?:\s+(?:of|for|includes?))?",
         "forward", 6),
    Rule(r"\bcorrelat\w*\s+(?:clinically\s+)?(?:for|with)\b", "forward", 6),
    Rule(r"\b(?:evaluat\w*|assess\w*|eval)\s+for\b", "forward", 6),
    Rule(r"\b(?:versus|vs)\b", "both", 3),
    Rule(r"\bor\b", "forward", 3),
    Rule(r"\b(?:or|versus|vs)\b", "backward", 0),
    Rule(rf"\b(?:is|are|was|were)\s+(?:also\s+|more\s+|less\s+)?(?:possible|probable|likely|"
         rf"unlikely|suspected|questioned|questionable|considered|favou?red|a consideration|"
         rf"not excluded){_CLAUSE_END}", "backward", 8),
    Rule(r"\b(?:is|are|was|were)\s+(?:possibly|probably|likely|questionably|perhaps)\s+"
         r"(?:\w+ly\s+)?(?:\w+ed|present|seen|visible|large)\b", "backward", 8),
    Rule(r"\b(?:may|might|could|can|possibly)\s+(?:also\s+)?(?:be\s+)?(?:present|seen|noted|"
         r"visible|identified|exist|persist)\b", "backward", 8),
    Rule(r"\b(?:not\s+(?:well|clearly|definitely|reliably)|poorly|incompletely|suboptimally)"
         r"\s+(?:seen|visuali[sz]ed|evaluated|assessed|identified|demonstrated)\b",
         "backward", 8),
    Rule(r"\bdifficult to (?:assess|evaluate|see)\b", "backward", 8),
)

#: Stability words: a neutral mention described only as stable is uncertain (CheXpert).
STABILITY_RULES: Final[tuple[Rule, ...]] = (
    Rule(r"\b(?:stable|stably|unchanged|similar|as before|not (?:significantly )?changed|"
         r"(?:no|without) (?:significant |interval |substantial |appreciable )?change)\b",
         "both", 6),
)

#: Words of enlargement: a neutral mention near one is positive even when called stable.
ENLARGEMENT_RULES: Final[tuple[Rule, ...]] = (
    Rule(r"\b(?:enlarg\w*|large|larger|widen\w*|prominen\w*|increas\w*|dilat\w*|globular|"
         r"cardiomegaly)\b", "both", 6),
)

#: Phrases that contain a negation word but negate nothing ("no change in the effusion").
PSEUDO_NEGATIONS: Final[tuple[str, ...]] = (
    r"\b(?:no|without|not)\s+(?:\w+\s+)?(?:change|changes|changed|increase|increased|decrease|"
    r"decreased|difference|worsening|worsened|progression|improvement)\b",
    r"\bnot only\b",
    r"\b(?:than|above|beyond)\s+normal\b",
    r"\bgram[- ]negative\b",
    r"\b(?:partial|partially|partly|incomplete|incompletely)\s+(?:\w+\s+)?"
    r"(?:resol\w*|clear\w*|remov\w*)",
)

#: Clause boundaries: no trigger reaches across one.
CLAUSE_BOUNDARIES: Final[tuple[str, ...]] = (
    r"\b(?:but|however|although|though|whereas|while|yet|except|which|otherwise)\b",
    r"\b(?:aside from|apart from|other than|with the exception of)\b",
    r",\s*and\s+(?:the|there|a|an)\b",
)

#: Ends forward scopes only: the verb after a negated list, a new subject.
FORWARD_STOPS: Final[tuple[str, ...]] = (
    r"\b(?:is|are|was|were|has|have|had|appears?|remains?|seems?|shows?|demonstrates?)\b",
    r"\band (?:the|there)\b",
)

# --------------------------------------------------------------------------------------------
# Compiled tables.
# --------------------------------------------------------------------------------------------


def _alternation(phrases: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(phrases, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(ordered) + r")\b")


class _MentionPattern(NamedTuple):
    label: str
    kind: MentionKind
    pattern: re.Pattern[str]


class _CompiledRule(NamedTuple):
    pattern: re.Pattern[str]
    direction: Direction
    max_words: int
    stop_at_comma: bool


def _compile_rules(rules: Iterable[Rule]) -> tuple[_CompiledRule, ...]:
    return tuple(_CompiledRule(re.compile(r.pattern), r.direction, r.max_words,
                               r.stop_at_comma) for r in rules)


_OTHER: Final = "Other Finding"
_MENTION_PATTERNS: Final[tuple[_MentionPattern, ...]] = (
    *(_MentionPattern(label, "finding", _alternation(p)) for label, p in MENTION_PHRASES.items()),
    *(_MentionPattern(label, "neutral", _alternation(p)) for label, p in NEUTRAL_PHRASES.items()),
    *(_MentionPattern(label, "hedged", _alternation(p)) for label, p in HEDGED_PHRASES.items()),
    _MentionPattern(_OTHER, "other", _alternation(OTHER_FINDING_PHRASES)),
)
_UNMENTIONS: Final[dict[str, re.Pattern[str]]] = {
    label: _alternation(p) for label, p in UNMENTION_PHRASES.items() if p
}
_POSITIONAL: Final = re.compile(POSITIONAL_PREFIX)
_PRENEG: Final = _compile_rules(PRE_NEGATION_UNCERTAINTY_RULES)
_NEGATION: Final = _compile_rules(NEGATION_RULES)
_UNCERTAINTY: Final = _compile_rules(UNCERTAINTY_RULES)
_STABILITY: Final = _compile_rules(STABILITY_RULES)
_ENLARGEMENT: Final = _compile_rules(ENLARGEMENT_RULES)
_PSEUDO: Final = tuple(re.compile(p) for p in PSEUDO_NEGATIONS)
_BOUNDARIES: Final = tuple(re.compile(p) for p in CLAUSE_BOUNDARIES)
_FORWARD_STOPS: Final = tuple(re.compile(p) for p in FORWARD_STOPS)
_WORD: Final = re.compile(r"[a-z0-9]+")
_SENTENCE_END: Final = re.compile(r"[.!?;]+(?=\s|$)|\n\s*\n")
_HEADER: Final = re.compile(r"^\s*[a-z][a-z /()&-]{0,40}:\s*", re.MULTILINE)

_STATUS_VALUE: Final[dict[Status, float]] = {
    "positive": POSITIVE, "negative": NEGATIVE, "uncertain": UNCERTAIN,
}


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """One mention of an observation in a report, with its classification.

    Parameters
    ----------
    label
        CheXpert observation, or ``"Other Finding"`` for abnormalities outside the 14 labels
        (they only rule out No Finding).
    text
        The matched phrase, as it appears in the cleaned (lower-case) sentence.
    sentence
        The cleaned sentence the mention was found in.
    status
        ``"positive"``, ``"negative"`` or ``"uncertain"``.
    kind
        ``"finding"``, ``"neutral"`` (normal anatomy such as "heart size"), ``"hedged"``
        (uncertain unless negated) or ``"other"``.
    """

    label: str
    text: str
    sentence: str
    status: Status
    kind: MentionKind

    @property
    def value(self) -> float:
        """CheXpert value of the status: ``1.0``, ``0.0`` or ``-1.0``."""
        return _STATUS_VALUE[self.status]


def extract_mentions(text: str) -> list[Mention]:
    """Find and classify every observation mention in a report.

    Parameters
    ----------
    text
        Report text (findings and/or impression; section headers such as ``FINDINGS:`` are
        ignored).

    Returns
    -------
    list of Mention
        In order of sentences, then observations, then position.

    Raises
    ------
    TypeError
        If ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    mentions: list[Mention] = []
    for sentence in split_sentences(text):
        mentions.extend(_sentence_mentions(sentence))
    return mentions


def label_report(text: str) -> dict[str, float | None]:
    """Label one report with the 14 CheXpert observations.

    Parameters
    ----------
    text
        Report text.

    Returns
    -------
    dict
        Every name of :data:`report_language.labels.CHEXPERT_LABELS`, in that order, mapped to
        ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or ``None`` (not
        mentioned). Per observation, positive wins over uncertain, uncertain over negative.
        No Finding is ``1.0`` when nothing other than Support Devices is positive or
        uncertain, else ``None``.

    Raises
    ------
    TypeError
        If ``text`` is not a string.

    Examples
    --------
    >>> labels = label_report("Small left pleural effusion. Pneumonia cannot be excluded.")
    >>> labels["Pleural Effusion"], labels["Pneumonia"], labels["No Finding"]
    (1.0, -1.0, None)
    """
    return _aggregate(extract_mentions(text))


def label_reports(texts: Iterable[str]) -> list[dict[str, float | None]]:
    """Label several reports; see :func:`label_report`.

    Parameters
    ----------
    texts
        Report texts.

    Returns
    -------
    list of dict
        One label mapping per report, in order.
    """
    return [label_report(text) for text in texts]


def split_sentences(text: str) -> list[str]:
    """Clean a report and split it into sentences, as the labeler sees them.

    Cleaning follows CheXpert: lower case, ``and/or`` -> ``or``, ``X/Y`` -> ``X or Y``, one
    space between words. Section headers (``FINDINGS:``) are removed. Sentences end at
    ``.``, ``!``, ``?`` or ``;`` followed by a space (not inside ``1.5 cm``) and at blank
    lines; single line breaks (wrapped text) do not end a sentence.

    Parameters
    ----------
    text
        Report text.

    Returns
    -------
    list of str
        Non-empty cleaned sentences without their final punctuation.
    """
    lowered = _HEADER.sub(" ", text.lower())
    lowered = lowered.replace("and/or", "or")
    lowered = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", lowered)
    sentences = []
    for part in _SENTENCE_END.split(lowered):
        sentence = " ".join(part.split())
        if _WORD.search(sentence):
            sentences.append(sentence)
    return sentences


# --------------------------------------------------------------------------------------------
# Classification.
# --------------------------------------------------------------------------------------------


class _Span(NamedTuple):
    start: int
    end: int


class _Context:
    """The triggers and boundaries of one sentence, and the scope test."""

    def __init__(self, sentence: str) -> None:
        self.sentence = sentence
        self.word_starts = [m.start() for m in _WORD.finditer(sentence)]
        pseudo = [_Span(*m.span()) for p in _PSEUDO for m in p.finditer(sentence)]
        self.boundaries = [_Span(*m.span()) for p in _BOUNDARIES for m in p.finditer(sentence)]
        self.forward_stops = [_Span(*m.span()) for p in _FORWARD_STOPS
                              for m in p.finditer(sentence)]
        self.preneg = self._find(_PRENEG, [])
        self.negation = self._find(_NEGATION, pseudo)
        self.uncertainty = self._find(_UNCERTAINTY, [])
        self.stability = self._find(_STABILITY, [])
        self.enlargement = self._find(_ENLARGEMENT, [])

    def _find(self, rules: tuple[_CompiledRule, ...],
              exclude: list[_Span]) -> list[tuple[_Span, _CompiledRule]]:
        found = []
        for rule in rules:
            for m in rule.pattern.finditer(self.sentence):
                span = _Span(*m.span())
                if span.end > span.start and not any(_overlaps(span, e) for e in exclude):
                    found.append((span, rule))
        return found

    def _words_between(self, start: int, end: int) -> int:
        return (bisect.bisect_left(self.word_starts, end)
                - bisect.bisect_left(self.word_starts, start))

    def reaches(self, triggers: list[tuple[_Span, _CompiledRule]], mention: _Span) -> bool:
        """Whether any of ``triggers`` has ``mention`` in its scope."""
        for span, rule in triggers:
            if _overlaps(span, mention):
                continue
            if span.end <= mention.start and rule.direction in ("forward", "both"):
                gap = _Span(span.end, mention.start)
                stops = self.boundaries + self.forward_stops
            elif span.start >= mention.end and rule.direction in ("backward", "both"):
                gap = _Span(mention.end, span.start)
                stops = self.boundaries
            else:
                continue
            if self._words_between(*gap) > rule.max_words:
                continue
            if any(gap.start <= s.start < gap.end for s in stops):
                continue
            if rule.stop_at_comma and "," in self.sentence[gap.start:gap.end]:
                continue
            return True
        return False

    def classify(self, mention: _Span, kind: MentionKind) -> Status:
        """CheXpert's order: pre-negation uncertainty, negation, uncertainty, positive."""
        if self.reaches(self.preneg, mention):
            return "uncertain"
        if self.reaches(self.negation, mention):
            return "negative"
        if self.reaches(self.uncertainty, mention) or kind == "hedged":
            return "uncertain"
        if (kind == "neutral" and self.reaches(self.stability, mention)
                and not self.reaches(self.enlargement, mention)):
            return "uncertain"
        return "positive"


def _overlaps(a: _Span, b: _Span) -> bool:
    return a.start < b.end and b.start < a.end


def _sentence_mentions(sentence: str) -> list[Mention]:
    unmentions = {label: [_Span(*m.span()) for m in pattern.finditer(sentence)]
                  for label, pattern in _UNMENTIONS.items()}
    spans: list[tuple[str, MentionKind, _Span]] = []
    for entry in _MENTION_PATTERNS:
        for m in entry.pattern.finditer(sentence):
            span = _Span(*m.span())
            if any(_overlaps(span, u) for u in unmentions.get(entry.label, ())):
                continue
            if (entry.kind == "neutral" and entry.label in POSITIONAL_LABELS
                    and _POSITIONAL.search(sentence[:span.start])):
                continue
            spans.append((entry.label, entry.kind, span))
    spans.sort(key=lambda item: item[2].start)
    # A neutral mention inside a finding mention of the same label ("widened mediastinum")
    # is the same mention.
    spans = [(label, kind, span) for label, kind, span in spans
             if kind != "neutral" or not any(
                 other_label == label and other_kind != "neutral" and _overlaps(span, other)
                 for other_label, other_kind, other in spans)]
    if not spans:
        return []
    context = _Context(sentence)
    return [Mention(label, sentence[span.start:span.end], sentence,
                    context.classify(span, kind), kind)
            for label, kind, span in spans]


def _aggregate(mentions: list[Mention]) -> dict[str, float | None]:
    values: dict[str, list[float]] = {}
    no_finding = True
    for mention in mentions:
        value = mention.value
        if mention.label != "Support Devices" and value in (POSITIVE, UNCERTAIN):
            no_finding = False
        if mention.label == _OTHER:
            continue
        values.setdefault(mention.label, []).append(value)
        # CheXpert: "CHF" / "heart failure", positive or uncertain, is uncertain cardiomegaly.
        if (mention.label == "Edema" and value in (POSITIVE, UNCERTAIN)
                and re.fullmatch(r"chf|heart failure", mention.text)):
            values.setdefault("Cardiomegaly", []).append(UNCERTAIN)
    labels: dict[str, float | None] = {}
    for name in CHEXPERT_LABELS:
        found = values.get(name)
        if name == NO_FINDING:
            labels[name] = POSITIVE if no_finding else None
        elif not found:
            labels[name] = None
        elif POSITIVE in found:
            labels[name] = POSITIVE
        elif UNCERTAIN in found:
            labels[name] = UNCERTAIN
        else:
            labels[name] = NEGATIVE
    return labels
