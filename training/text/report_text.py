"""Radiology report text from structured findings: findings, impression, indication, plain language.

The phantom generator (:mod:`training.phantoms`) and the instruction data both write their
reports here, so the wording the model learns is the same everywhere.

Every sentence is built so that a rule-based CheXpert-style labeler recovers exactly the label
it was written for:

* a **positive** sentence names one label with one of that label's keywords (:data:`KEYWORDS`)
  and carries no negation or hedging cue;
* an **uncertain** sentence adds a hedge the CheXpert labeler knows ("possible", "questionable",
  "cannot be excluded", "may represent", "borderline heart size");
* a **negative** sentence negates the label ("No pneumothorax.", "Heart size is normal.");
* no sentence uses another label's keywords, except compound negatives such as
  "No pleural effusion or pneumothorax." that are only written when every label in them is
  negative. Words that CheXpert maps to a different label are avoided on purpose: "pleural
  line" and "Kerley lines" (``line`` is a Support Devices keyword), "nodular" outside lung
  lesions, "density", "opacity" outside Lung Opacity, "secondary to" and "or" in positives.

Laterality is the patient's side ("right" is on the viewer's left of a frontal radiograph).
For Support Devices, :attr:`FindingMention.location` names the device ("endotracheal tube",
"right internal jugular central venous catheter", "left PICC", "left-sided pacemaker",
"nasogastric tube"); for Lung Lesion, severity ``"small"`` reads as a nodule and ``"large"``
as a mass; for Fracture, the location names the bone ("left lateral 6th rib", "right
clavicle"; a plural "ribs" gives plural wording).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from report_language.labels import CHEXPERT_LABELS, NO_FINDING

Certainty = Literal["positive", "uncertain"]
Side = Literal["left", "right", "bilateral"]
Severity = Literal["small", "moderate", "large", "mild", "severe"]

#: Labels a mention may name: every CheXpert label except No Finding.
FINDING_LABELS: Final[tuple[str, ...]] = tuple(x for x in CHEXPERT_LABELS if x != NO_FINDING)

#: Words (lower case, matched on word boundaries) every sentence about a label contains one of.
#: No sentence written for one label contains a keyword of another, except compound negatives.
KEYWORDS: Final[Mapping[str, tuple[str, ...]]] = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly", "heart", "cardiac silhouette"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Enlarged Cardiomediastinum": ("mediastinum", "mediastinal", "cardiomediastinal"),
    "Fracture": ("fracture", "fractures"),
    "Lung Lesion": ("nodule", "nodules", "mass", "masses"),
    "Lung Opacity": ("opacity", "opacities", "airspace disease"),
    "Pleural Effusion": ("effusion", "effusions"),
    "Pleural Other": ("pleural thickening",),
    "Pneumonia": ("pneumonia", "bronchopneumonia"),
    "Pneumothorax": ("pneumothorax", "pneumothoraces"),
    "Support Devices": (
        "tube", "catheter", "picc", "pacemaker", "lines", "devices", "device",
    ),
}

#: Hedges that mark an uncertain mention (each is a CheXpert uncertainty cue).
UNCERTAINTY_CUES: Final[tuple[str, ...]] = (
    "possible", "possibly", "questionable", "cannot be excluded", "may represent", "borderline",
)

#: Negation cues used by negative sentences.
NEGATION_CUES: Final[tuple[str, ...]] = ("no", "not", "normal", "within normal limits")

_ADVERB: Final[Mapping[str, str]] = {
    "mild": "mildly", "moderate": "moderately", "severe": "markedly",
    "small": "slightly", "large": "markedly",
}

# Clinical importance: the order in which impressions list findings.
_IMPRESSION_ORDER: Final[tuple[str, ...]] = (
    "Pneumothorax", "Enlarged Cardiomediastinum", "Pneumonia", "Consolidation", "Edema",
    "Pleural Effusion", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Atelectasis",
    "Fracture", "Pleural Other", "Support Devices",
)

# Labels whose positive or uncertain mention means the lungs are not "clear".
_PARENCHYMAL: Final[frozenset[str]] = frozenset({
    "Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Lung Opacity", "Pneumonia",
    "Pneumothorax", "Pleural Effusion",
})


@dataclass(frozen=True)
class FindingMention:
    """One finding as a report states it.

    Parameters
    ----------
    label
        A CheXpert label other than "No Finding".
    certainty
        ``"positive"`` or ``"uncertain"`` (hedged wording).
    side
        The patient's side, ``"bilateral"``, or ``None`` when not stated.
    severity
        ``small``/``moderate``/``large`` (effusion, pneumothorax, nodule vs mass) or
        ``mild``/``moderate``/``severe`` (cardiomegaly, edema), or ``None``.
    location
        Where: a lobe ("right lower lobe"), a bone ("left lateral 6th rib"), ``"apical"``
        or ``"lateral"`` for pleural thickening, or the device name for Support Devices.
    """

    label: str
    certainty: Certainty = "positive"
    side: Side | None = None
    severity: Severity | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        if self.label not in FINDING_LABELS:
            raise ValueError(f"label must be a CheXpert finding other than No Finding, "
                             f"got {self.label!r}")
        if self.certainty not in ("positive", "uncertain"):
            raise ValueError(f"certainty must be 'positive' or 'uncertain', got "
                             f"{self.certainty!r}")
        if self.side not in (None, "left", "right", "bilateral"):
            raise ValueError(f"side must be left, right, bilateral or None, got {self.side!r}")
        if self.severity not in (None, "small", "moderate", "large", "mild", "severe"):
            raise ValueError(f"unknown severity {self.severity!r}")


# --------------------------------------------------------------------------- helpers
def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    text = _cap(text.strip())
    return text if text.endswith(".") else text + "."


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


def _sev(m: FindingMention, default: str = "") -> str:
    return m.severity or default


def _loc(m: FindingMention, default: str) -> str:
    return m.location or default


def _side_adj(m: FindingMention) -> str:
    """'left', 'right', 'bilateral' or '' for an adjective position."""
    return m.side or ""


def _plural_location(location: str) -> bool:
    return location.endswith("ribs") or " and " in location


def _as_adjective(location: str) -> str:
    """'left lateral 5th and 6th ribs' -> 'left lateral 5th and 6th rib' (before a noun)."""
    return location[:-1] if location.endswith("ribs") else location


# --------------------------------------------------------------------------- positives
def _cardiomegaly(m: FindingMention, rng: random.Random) -> str:
    if m.certainty == "uncertain":
        return _pick(rng, ["Borderline heart size.", "Possible mild cardiomegaly.",
                           "Mild cardiomegaly cannot be excluded.",
                           "The heart is possibly mildly enlarged."])
    if m.severity in ("mild", "moderate", "severe"):
        adv = _ADVERB[m.severity]
        return _pick(rng, [f"{m.severity} cardiomegaly.", f"The heart is {adv} enlarged.",
                           f"The cardiac silhouette is {adv} enlarged.",
                           f"Heart size is {adv} enlarged.",
                           f"There is {m.severity} enlargement of the cardiac silhouette."])
    return _pick(rng, ["The heart is enlarged.", "Cardiomegaly.",
                       "The cardiac silhouette is enlarged.", "Enlarged cardiac silhouette.",
                       "There is cardiomegaly."])


def _mediastinum(m: FindingMention, rng: random.Random) -> str:
    if m.certainty == "uncertain":
        return _pick(rng, ["The mediastinum is possibly widened.",
                           "Widening of the superior mediastinum cannot be excluded.",
                           "Questionable widening of the mediastinum."])
    return _pick(rng, ["The mediastinum is widened.", "Widened mediastinum.",
                       "The superior mediastinum is widened.",
                       "Widening of the superior mediastinum.",
                       "The mediastinal silhouette is widened.",
                       "Enlarged cardiomediastinal silhouette.",
                       "The mediastinal contours are widened."])


def _effusion(m: FindingMention, rng: random.Random) -> str:
    sev = _sev(m)
    if m.side == "bilateral":
        if m.certainty == "uncertain":
            return _pick(rng, ["Possible small bilateral pleural effusions.",
                               "Small bilateral pleural effusions cannot be excluded.",
                               "Minimal blunting of both costophrenic angles may represent "
                               "trace pleural effusions."])
        options = [f"{sev} bilateral pleural effusions.", f"Bilateral {sev} pleural effusions.",
                   f"There are {sev} bilateral pleural effusions."]
        if sev == "small":
            options.append("Blunting of both costophrenic angles, consistent with small "
                           "bilateral pleural effusions.")
        return _pick(rng, options)
    side = _side_adj(m)
    if m.certainty == "uncertain":
        angle = f"the {side} costophrenic angle" if side else "a costophrenic angle"
        return _pick(rng, [f"Possible small {side} pleural effusion.",
                           f"A small {side} pleural effusion cannot be excluded.",
                           f"Minimal blunting of {angle} may represent a trace pleural "
                           f"effusion."])
    article = "an" if (sev or side or "p")[0] in "aeiou" else "a"
    options = [f"{sev} {side} pleural effusion.", f"There is {article} {sev} {side} pleural "
               f"effusion.", f"{article} {sev} {side} pleural effusion is present."]
    if side:
        options.append(f"{sev} {side}-sided pleural effusion.")
    if sev == "small" and side:
        options.append(f"Blunting of the {side} costophrenic angle, consistent with a small "
                       f"pleural effusion.")
    if sev in ("moderate", "large") and side:
        options.append(f"{sev} {side} pleural effusion with a meniscus along the lateral "
                       f"chest wall.")
    return _pick(rng, options)


def _pneumothorax(m: FindingMention, rng: random.Random) -> str:
    side = "left" if m.side == "left" else "right" if m.side == "right" else ""
    sev = _sev(m)
    if m.side == "bilateral":
        if m.certainty == "uncertain":
            return "Possible small bilateral pneumothoraces."
        return f"{sev} bilateral pneumothoraces."
    if m.certainty == "uncertain":
        return _pick(rng, [f"Possible small {side} apical pneumothorax.",
                           f"A tiny {side} apical pneumothorax cannot be excluded.",
                           f"Questionable {side} apical pneumothorax."])
    article = "an" if (sev or side or "p")[0] in "aeiou" else "a"
    options = [f"{sev} {side} pneumothorax.", f"There is {article} {sev} {side} pneumothorax.",
               f"{article} {sev} {side} pneumothorax is present."]
    if side:
        options.append(f"A visceral pleural edge is seen in the {side} hemithorax, consistent "
                       f"with {article} {sev} pneumothorax.")
        if sev:
            options.append(f"{side} pneumothorax, {sev} in size.")
    return _pick(rng, options)


def _consolidation(m: FindingMention, rng: random.Random) -> str:
    loc = m.location
    if m.certainty == "uncertain":
        if loc:
            return _pick(rng, [f"Possible {loc} consolidation.",
                               f"Consolidation in the {loc} cannot be excluded.",
                               f"Questionable consolidation in the {loc}."])
        return _pick(rng, ["Possible focal consolidation.",
                           "Early consolidation cannot be excluded."])
    if loc:
        return _pick(rng, [f"{loc} consolidation.", f"Consolidation in the {loc}.",
                           f"There is {loc} consolidation.",
                           f"Dense consolidation in the {loc} with air bronchograms.",
                           f"Focal consolidation is present in the {loc}."])
    return _pick(rng, ["Focal consolidation.", "There is focal consolidation."])


def _opacity(m: FindingMention, rng: random.Random) -> str:
    loc = m.location
    plural = loc is not None and " and " in loc
    noun = "opacities" if plural else "opacity"
    if m.certainty == "uncertain":
        if loc:
            return _pick(rng, [f"Possible subtle {noun} in the {loc}.",
                               f"Questionable {loc} {noun}."])
        return "Possible subtle opacity."
    if loc:
        options = [f"Patchy {noun} in the {loc}.", f"Hazy {noun} in the {loc}.",
                   f"Patchy airspace {noun} in the {loc}.",
                   f"Ill-defined {noun} in the {loc}."]
        if not plural:
            options += [f"Ill-defined {loc} opacity.", f"There is a patchy {loc} opacity."]
        return _pick(rng, options)
    return _pick(rng, ["Patchy opacity.", "Patchy airspace opacities."])


def _pneumonia(m: FindingMention, rng: random.Random) -> str:
    loc = m.location
    if m.certainty == "uncertain":
        if loc:
            return _pick(rng, [f"Possible {loc} pneumonia.",
                               f"Pneumonia in the {loc} cannot be excluded.",
                               f"Findings may represent early pneumonia in the {loc}."])
        return _pick(rng, ["Possible early pneumonia.", "Pneumonia cannot be excluded."])
    if loc:
        return _pick(rng, [f"{loc} pneumonia.", f"Pneumonia in the {loc}.",
                           f"Findings consistent with {loc} pneumonia.",
                           f"Multifocal bronchopneumonia in the {loc}.",
                           f"There is {loc} pneumonia."])
    return _pick(rng, ["Findings consistent with pneumonia.", "Pneumonia."])


def _edema(m: FindingMention, rng: random.Random) -> str:
    if m.certainty == "uncertain":
        return _pick(rng, ["Possible mild pulmonary edema.",
                           "Mild pulmonary edema cannot be excluded.",
                           "Perihilar haziness may represent mild pulmonary edema."])
    sev = _sev(m)
    return _pick(rng, [f"{sev} pulmonary edema.", f"There is {sev} pulmonary edema.",
                       f"{sev} interstitial pulmonary edema.",
                       f"Bilateral perihilar haziness, consistent with {sev} pulmonary edema.",
                       f"Findings of {sev} pulmonary edema with perihilar predominance."])


def _atelectasis(m: FindingMention, rng: random.Random) -> str:
    if m.side == "bilateral":
        if m.certainty == "uncertain":
            return _pick(rng, ["Possible minimal bibasilar atelectasis.",
                               "Questionable linear atelectasis at both lung bases."])
        return _pick(rng, ["Bibasilar atelectasis.", "Bibasilar linear atelectasis.",
                           "Plate-like atelectasis at both lung bases.",
                           "Linear atelectasis at both lung bases."])
    side = _side_adj(m)
    if m.certainty == "uncertain":
        return _pick(rng, [f"Possible {side} basilar atelectasis.",
                           f"Minimal {side} basilar atelectasis cannot be excluded.",
                           f"Questionable linear atelectasis at the {side} lung base."])
    where = f"the {side} lung base" if side else "the lung base"
    return _pick(rng, [f"Linear atelectasis at {where}.", f"Plate-like atelectasis at {where}.",
                       f"{side} basilar atelectasis.", f"Subsegmental atelectasis at {where}.",
                       f"Band-like atelectasis at {where}."])


def _lesion(m: FindingMention, rng: random.Random) -> str:
    loc = _loc(m, "lung")
    mass = m.severity == "large"
    if m.certainty == "uncertain":
        return _pick(rng, [f"Possible small nodule in the {loc}.",
                           f"Questionable nodule in the {loc}.",
                           f"A small nodule in the {loc} cannot be excluded."])
    if mass:
        return _pick(rng, [f"Mass in the {loc}.", f"There is a rounded {loc} mass.",
                           f"A well-defined mass is present in the {loc}.",
                           f"Large round mass in the {loc}."])
    return _pick(rng, [f"Nodule in the {loc}.", f"A well-circumscribed nodule is seen in the "
                       f"{loc}.", f"There is a round {loc} nodule.",
                       f"Solitary pulmonary nodule in the {loc}.",
                       f"{loc} pulmonary nodule."])


def _fracture(m: FindingMention, rng: random.Random) -> str:
    loc = m.location
    if m.certainty == "uncertain":
        if loc:
            return _pick(rng, [f"Possible nondisplaced fracture of the {loc}.",
                               f"Fracture of the {loc} cannot be excluded.",
                               f"Questionable fracture of the {loc}."])
        return "Possible nondisplaced rib fracture."
    if not loc:
        return _pick(rng, ["Rib fracture.", "There is a displaced rib fracture."])
    if _plural_location(loc):
        adj = _as_adjective(loc)
        return _pick(rng, [f"Fractures of the {loc}.", f"Displaced fractures of the {loc}.",
                           f"{adj} fractures.", f"There are displaced {adj} fractures.",
                           f"Healing fractures of the {loc} with callus formation."])
    return _pick(rng, [f"Fracture of the {loc}.", f"Displaced fracture of the {loc}.",
                       f"{loc} fracture.", f"There is a displaced {loc} fracture.",
                       f"Healing fracture of the {loc} with callus formation."])


def _pleural_other(m: FindingMention, rng: random.Random) -> str:
    side = "bilateral" if m.side == "bilateral" else _side_adj(m)
    if m.certainty == "uncertain":
        return _pick(rng, [f"Possible {side} pleural thickening.",
                           f"Questionable {side} apical pleural thickening."])
    if m.location == "apical":
        return _pick(rng, [f"{side} apical pleural thickening.",
                           f"Pleural thickening at the {side} apex." if side != "bilateral"
                           else "Pleural thickening at both apices.",
                           f"There is {side} apical pleural thickening."])
    if side == "bilateral":
        return _pick(rng, ["Bilateral pleural thickening.",
                           "Pleural thickening along both lateral chest walls."])
    return _pick(rng, [f"Pleural thickening along the {side} lateral chest wall.",
                       f"Smooth {side} pleural thickening.", f"There is {side} pleural "
                       f"thickening.", f"{side} lateral pleural thickening."])


_DEVICE_SENTENCES: Final[Mapping[str, tuple[str, ...]]] = {
    "endotracheal tube": (
        "Endotracheal tube terminates 4 cm above the carina.",
        "An endotracheal tube is in place, with the tip above the carina.",
        "Endotracheal tube in standard position.",
    ),
    "nasogastric tube": (
        "Nasogastric tube courses below the diaphragm, with the tip in the stomach.",
        "A nasogastric tube is in place, terminating in the stomach.",
        "Nasogastric tube tip in the stomach.",
    ),
    "catheter": (
        "{Loc} terminates in the superior vena cava.",
        "A {loc} is in place, with the tip in the superior vena cava.",
        "{Loc} with the tip in the mid SVC.",
    ),
    "picc": (
        "{Loc} terminates in the superior vena cava.",
        "A {loc} is in place, with the tip in the lower SVC.",
        "{Loc} tip projects over the superior vena cava.",
    ),
    "pacemaker": (
        "{Loc} with leads in the right atrium and right ventricle.",
        "A {loc} is present, with leads terminating in the right atrium and right ventricle.",
        "{Loc} and leads are in standard position.",
    ),
}


def _devices(m: FindingMention, rng: random.Random) -> str:
    loc = (m.location or "").strip()
    if m.certainty == "uncertain":
        return f"Possible {loc or 'support device'} overlying the chest."
    if not loc:
        return _pick(rng, ["Support devices are in place.", "Lines and tubes are in place.",
                           "Monitoring and support devices are in standard position."])
    key = loc.lower()
    for kind in ("endotracheal tube", "nasogastric tube", "picc", "pacemaker", "catheter"):
        if kind in key:
            template = _pick(rng, _DEVICE_SENTENCES[kind])
            return template.replace("{Loc}", _cap(loc)).replace("{loc}", loc)
    return f"{_cap(loc)} is in place."


_POSITIVE: Final[Mapping[str, Callable[[FindingMention, random.Random], str]]] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Enlarged Cardiomediastinum": _mediastinum,
    "Fracture": _fracture,
    "Lung Lesion": _lesion,
    "Lung Opacity": _opacity,
    "Pleural Effusion": _effusion,
    "Pleural Other": _pleural_other,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Support Devices": _devices,
}

_NEGATIVE: Final[Mapping[str, tuple[str, ...]]] = {
    "Atelectasis": ("No atelectasis.", "No focal atelectasis.", "There is no atelectasis."),
    "Cardiomegaly": ("Heart size is normal.", "The heart is not enlarged.", "Normal heart size.",
                     "The cardiac silhouette is normal in size."),
    "Consolidation": ("No focal consolidation.", "No consolidation.",
                      "There is no focal consolidation.", "No evidence of consolidation."),
    "Edema": ("No pulmonary edema.", "No evidence of pulmonary edema.",
              "There is no pulmonary edema."),
    "Enlarged Cardiomediastinum": ("The mediastinal contours are normal.",
                                   "Normal mediastinal contours.",
                                   "The mediastinum is not widened.",
                                   "Cardiomediastinal silhouette is within normal limits."),
    "Fracture": ("No acute fracture.", "No displaced fracture.", "No displaced rib fracture.",
                 "No fracture is seen."),
    "Lung Lesion": ("No pulmonary nodules or masses.", "No focal nodule or mass.",
                    "No lung nodule or mass is seen."),
    "Lung Opacity": ("No focal airspace disease.", "No focal opacity.",
                     "No focal airspace opacity."),
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion.",
                         "No pleural effusions.", "No evidence of pleural effusion."),
    "Pleural Other": ("No pleural thickening.", "There is no pleural thickening."),
    "Pneumonia": ("No evidence of pneumonia.", "No radiographic evidence of pneumonia."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.",
                     "No evidence of pneumothorax.", "No pneumothorax is seen."),
    "Support Devices": ("No lines or tubes.", "No support devices are seen."),
}

# Compound negatives: written only when every label in the key is negative.
_COMPOUND_NEGATIVES: Final[tuple[tuple[frozenset[str], tuple[str, ...]], ...]] = (
    (frozenset({"Consolidation", "Pleural Effusion", "Pneumothorax"}),
     ("No focal consolidation, pleural effusion, or pneumothorax.",
      "There is no focal consolidation, pleural effusion, or pneumothorax.")),
    (frozenset({"Pleural Effusion", "Pneumothorax"}),
     ("No pleural effusion or pneumothorax.", "No pneumothorax or pleural effusion.",
      "There is no pleural effusion or pneumothorax.")),
    (frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"}),
     ("Heart size and mediastinal contours are normal.",
      "The heart and mediastinum are within normal limits.")),
)


def positive_sentence(mention: FindingMention, rng: random.Random) -> str:
    """One findings-section sentence that states a mention (positive or hedged).

    Parameters
    ----------
    mention
        The finding; its side, severity and location are worded when given.
    rng
        Source of the phrasing choice.

    Returns
    -------
    str
        A sentence ending with a full stop, e.g. "Small right pleural effusion.".
    """
    return _sentence(_POSITIVE[mention.label](mention, rng))


def negative_sentence(label: str, rng: random.Random) -> str:
    """One sentence that states a label is absent ("No pneumothorax.").

    Parameters
    ----------
    label
        A CheXpert label other than "No Finding".
    rng
        Source of the phrasing choice.

    Returns
    -------
    str
        The sentence.
    """
    if label not in _NEGATIVE:
        raise ValueError(f"no negative wording for {label!r}; expected one of {FINDING_LABELS}")
    return _pick(rng, _NEGATIVE[label])


def _merge_same_location_kind(mentions: Sequence[FindingMention]) -> list[FindingMention]:
    """Join Lung Opacity mentions of equal certainty into one with both locations."""
    out: list[FindingMention] = []
    for m in mentions:
        twin = next((o for o in out if m.label == "Lung Opacity" and o.label == m.label
                     and o.certainty == m.certainty and o.location and m.location
                     and " and " not in o.location), None)
        if twin is not None and twin.location and m.location:
            merged = FindingMention(m.label, m.certainty, None, None,
                                    f"{twin.location} and {m.location}")
            out[out.index(twin)] = merged
        else:
            out.append(m)
    return out


def render_findings(
    mentions: Sequence[FindingMention], negatives: Sequence[str], rng: random.Random
) -> str:
    """Write a findings section: one sentence per mention and per negative, in random order.

    Negatives that fit a compound ("No pleural effusion or pneumothorax.") are sometimes
    joined. "Lungs are clear." is added now and then when no parenchymal or pleural finding is
    mentioned; it names no CheXpert label.

    Parameters
    ----------
    mentions
        Positive and uncertain findings.
    negatives
        Labels to state as absent. A label may not be both mentioned and negative.
    rng
        Source of phrasing and order.

    Returns
    -------
    str
        Sentences separated by single spaces.
    """
    mentioned = {m.label for m in mentions}
    clash = mentioned & set(negatives)
    if clash:
        raise ValueError(f"labels both mentioned and negative: {sorted(clash)}")
    sentences = [positive_sentence(m, rng) for m in _merge_same_location_kind(mentions)]
    remaining = list(dict.fromkeys(negatives))
    for group, options in _COMPOUND_NEGATIVES:
        if group <= set(remaining) and rng.random() < 0.5:
            sentences.append(_pick(rng, options))
            remaining = [x for x in remaining if x not in group]
    sentences += [negative_sentence(label, rng) for label in remaining]
    if not mentioned & _PARENCHYMAL and rng.random() < 0.6:
        sentences.append(_pick(rng, ["Lungs are clear.", "The lungs are clear.",
                                     "The lungs are well expanded and clear."]))
    if not sentences:
        sentences.append("The lungs are clear.")
    rng.shuffle(sentences)
    return " ".join(sentences)


def _impression_phrase(m: FindingMention, rng: random.Random) -> str:
    if m.certainty == "uncertain":
        return positive_sentence(m, rng)
    loc, side, sev = m.location, m.side, m.severity
    label = m.label
    if label == "Pleural Effusion":
        noun = "pleural effusions" if side == "bilateral" else "pleural effusion"
        return _sentence(f"{sev or ''} {side or ''} {noun}")
    if label == "Pneumothorax":
        return _sentence(f"{sev or ''} {side if side in ('left', 'right') else ''} "
                         f"pneumothorax")
    if label == "Cardiomegaly":
        return _sentence(_pick(rng, [f"{sev or ''} cardiomegaly", "cardiomegaly"]))
    if label == "Edema":
        return _sentence(f"{sev or ''} pulmonary edema")
    if label == "Consolidation" and loc:
        return _sentence(_pick(rng, [f"{loc} consolidation", f"consolidation in the {loc}"]))
    if label == "Pneumonia" and loc:
        return _sentence(_pick(rng, [f"{loc} pneumonia", f"findings consistent with {loc} "
                                     f"pneumonia"]))
    if label == "Lung Opacity" and loc:
        noun = "opacities" if " and " in loc else "opacity"
        return _sentence(f"patchy {noun} in the {loc}")
    if label == "Enlarged Cardiomediastinum":
        return _sentence(_pick(rng, ["widened mediastinum",
                                     "widening of the superior mediastinum"]))
    return positive_sentence(m, rng)


def render_impression(mentions: Sequence[FindingMention], rng: random.Random) -> str:
    """Write the impression: the findings by clinical importance, or a normal statement.

    Parameters
    ----------
    mentions
        Positive and uncertain findings (negatives are not repeated in impressions).
    rng
        Source of phrasing and layout (running text or a numbered list).

    Returns
    -------
    str
        E.g. "1. Moderate right pleural effusion. 2. Cardiomegaly." or
        "No acute cardiopulmonary process.".
    """
    pathologic = [m for m in mentions if m.label != "Support Devices"]
    # "Support devices as described" reads as a positive mention: only for certain devices.
    devices = [
        m for m in mentions if m.label == "Support Devices" and m.certainty == "positive"
    ]
    if not pathologic:
        normal = _pick(rng, ["No acute cardiopulmonary process.",
                             "No acute cardiopulmonary abnormality.",
                             "No acute intrathoracic process."])
        if devices:
            return _pick(rng, ["Support devices as described.", "Lines and tubes as above."]) \
                + " " + normal
        return _pick(rng, [normal, "Normal chest radiograph."])
    ordered = sorted(_merge_same_location_kind(pathologic),
                     key=lambda m: _IMPRESSION_ORDER.index(m.label))
    phrases = [_impression_phrase(m, rng) for m in ordered]
    if devices and rng.random() < 0.5:
        phrases.append(_pick(rng, ["Support devices as described.", "Lines and tubes as above."]))
    if len(phrases) > 1 and rng.random() < 0.4:
        return " ".join(f"{i}. {p}" for i, p in enumerate(phrases, start=1))
    return " ".join(phrases)


_INDICATIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pneumonia": ("Fever and productive cough.", "Cough and fever, evaluate for pneumonia."),
    "Consolidation": ("Cough and fever.", "Productive cough."),
    "Lung Opacity": ("Cough.", "Shortness of breath and cough."),
    "Edema": ("Dyspnea and leg swelling.", "History of heart failure, worsening dyspnea."),
    "Cardiomegaly": ("Dyspnea on exertion.", "Shortness of breath."),
    "Pleural Effusion": ("Shortness of breath.", "Dyspnea, decreased breath sounds."),
    "Pneumothorax": ("Acute chest pain and dyspnea.", "Sudden onset shortness of breath."),
    "Fracture": ("Fall, chest wall pain.", "Trauma, rib pain."),
    "Lung Lesion": ("Follow-up of pulmonary nodule.", "Weight loss and cough."),
    "Support Devices": ("Intubated patient, evaluate tube position.",
                        "Evaluate line placement."),
    "Enlarged Cardiomediastinum": ("Chest pain.", "Hypertension, chest pain."),
    "Atelectasis": ("Postoperative, shortness of breath.", "Hypoxia."),
    "Pleural Other": ("Chronic dyspnea.", "Follow-up."),
}
_GENERIC_INDICATIONS: Final[tuple[str, ...]] = (
    "Chest pain.", "Shortness of breath.", "Cough.", "Preoperative evaluation.",
    "Routine follow-up.", "Dyspnea.", "Evaluate for acute cardiopulmonary process.",
)


def render_indication(
    mentions: Sequence[FindingMention],
    rng: random.Random,
    *,
    sex: Literal["F", "M"] | None = None,
) -> str:
    """A clinical indication loosely matched to the findings (half the time generic).

    Parameters
    ----------
    mentions
        Findings of the study; one of them may shape the indication.
    rng
        Source of the choice.
    sex
        ``"F"`` or ``"M"`` for a "___-year-old woman/man with ..." preamble, as in
        de-identified MIMIC-CXR reports; ``None`` leaves it out.

    Returns
    -------
    str
        E.g. "___-year-old man with fever and productive cough.".
    """
    labels = [m.label for m in mentions if m.certainty == "positive"]
    if labels and rng.random() < 0.5:
        text = _pick(rng, _INDICATIONS[_pick(rng, labels)])
    else:
        text = _pick(rng, _GENERIC_INDICATIONS)
    if sex is not None and rng.random() < 0.5:
        person = "woman" if sex == "F" else "man"
        return f"___-year-old {person} with {text[0].lower()}{text[1:]}"
    return text


_EASY_POSITIVE: Final[Mapping[str, str]] = {
    "Atelectasis": "A small part of the {where}lung is not fully inflated (atelectasis).",
    "Cardiomegaly": "The heart looks larger than normal (cardiomegaly).",
    "Consolidation": "Part of the {where}lung is filled with fluid or inflammation "
                     "(consolidation).",
    "Edema": "There is extra fluid in both lungs (pulmonary edema).",
    "Enlarged Cardiomediastinum": "The space in the middle of the chest looks wider than "
                                  "normal (widened mediastinum).",
    "Fracture": "There is a break in {where_bone} (fracture).",
    "Lung Lesion": "There is a round spot in the {where}lung ({lesion}) that needs follow-up.",
    "Lung Opacity": "There is a hazy area in the {where}lung (opacity).",
    "Pleural Effusion": "There is {amount}fluid around the {where}lung{s} (pleural effusion).",
    "Pleural Other": "The lining of the {where}lung is thickened (pleural thickening).",
    "Pneumonia": "There are signs of a lung infection in the {where}lung (pneumonia).",
    "Pneumothorax": "There is air outside the {where}lung, so part of the lung has collapsed "
                    "(pneumothorax).",
    "Support Devices": "A medical device is in place ({what}).",
}
_EASY_NEGATIVE: Final[Mapping[str, str]] = {
    "Atelectasis": "No part of the lungs is collapsed (no atelectasis).",
    "Cardiomegaly": "The heart is a normal size (no cardiomegaly).",
    "Consolidation": "The lungs are not filled with fluid or inflammation (no consolidation).",
    "Edema": "There is no extra fluid in the lungs (no pulmonary edema).",
    "Enlarged Cardiomediastinum": "The middle of the chest looks normal (the mediastinum is "
                                  "not widened).",
    "Fracture": "No broken bones are seen (no fracture).",
    "Lung Lesion": "There are no spots in the lungs (no nodule or mass).",
    "Lung Opacity": "There are no hazy areas in the lungs (no opacity).",
    "Pleural Effusion": "There is no fluid around the lungs (no pleural effusion).",
    "Pleural Other": "The lining of the lungs is normal (no pleural thickening).",
    "Pneumonia": "There are no signs of a lung infection (no pneumonia).",
    "Pneumothorax": "There is no collapsed lung (no pneumothorax).",
    "Support Devices": "There are no tubes or lines (no support devices).",
}


def easy_language(mentions: Sequence[FindingMention], negatives: Sequence[str]) -> str:
    """A plain-language version of a report for patients.

    Each sentence keeps the medical term in brackets, so the plain version still names every
    finding (and a labeler still recovers it); hedged findings start with "There might be".

    Parameters
    ----------
    mentions
        Positive and uncertain findings.
    negatives
        Labels stated as absent.

    Returns
    -------
    str
        Short sentences; "Your chest X-ray looks normal." opens a report without findings.
    """
    out: list[str] = []
    pathologic = [m for m in mentions if m.label != "Support Devices"]
    if not pathologic:
        out.append("Your chest X-ray looks normal.")
    for m in _merge_same_location_kind(mentions):
        where = "" if m.side in (None, "bilateral") else f"{m.side} "
        if m.location and m.label in ("Consolidation", "Lung Opacity", "Pneumonia",
                                      "Lung Lesion"):
            has_left = "left" in m.location or "lingula" in m.location
            has_right = "right" in m.location
            where = "left and right " if has_left and has_right else "left " if has_left \
                else "right " if has_right else where
        amount = {"small": "a small amount of ", "moderate": "a moderate amount of ",
                  "large": "a large amount of "}.get(m.severity or "", "")
        text = _EASY_POSITIVE[m.label].format(
            where=where if m.side != "bilateral" else "",
            s="s" if m.side == "bilateral" else "",
            amount=amount,
            where_bone=f"the {m.location}" if m.location else "a bone",
            what=m.location or "support device",
            lesion="mass" if m.severity == "large" else "nodule",
        )
        if m.side == "bilateral" and m.label in ("Pleural Effusion", "Atelectasis",
                                                 "Pleural Other"):
            text = text.replace("the lungs", "both lungs").replace("the lung", "both lungs")
        if m.certainty == "uncertain":
            text = "It is possible that " + text[0].lower() + text[1:]
            text = text.replace("(", "(possible ", 1)
        out.append(text)
    for label in dict.fromkeys(negatives):
        out.append(_EASY_NEGATIVE[label])
    return " ".join(out)


def mentions_for_labels(
    labels: Mapping[str, float | None], rng: random.Random
) -> tuple[list[FindingMention], list[str]]:
    """Mentions and negatives for a label vector alone (no side, severity or location known).

    Parameters
    ----------
    labels
        CheXpert label per name: ``1.0`` positive, ``-1.0`` uncertain, ``0.0`` negative,
        ``None`` or missing when not mentioned. "No Finding" is ignored (it follows from the
        others).
    rng
        Shuffles the order of the mentions.

    Returns
    -------
    tuple of (list of FindingMention, list of str)
        The positive and uncertain mentions, and the labels to state as negative.
    """
    unknown = set(labels) - set(CHEXPERT_LABELS)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    mentions: list[FindingMention] = []
    negatives: list[str] = []
    for label in FINDING_LABELS:
        value = labels.get(label)
        if value is None:
            continue
        if value == 1.0:
            mentions.append(FindingMention(label))
        elif value == -1.0:
            mentions.append(FindingMention(label, certainty="uncertain"))
        elif value == 0.0:
            negatives.append(label)
        else:
            raise ValueError(f"label {label!r} has value {value!r}; expected 1, 0, -1 or None")
    rng.shuffle(mentions)
    return mentions, negatives


__all__ = [
    "FINDING_LABELS",
    "KEYWORDS",
    "NEGATION_CUES",
    "UNCERTAINTY_CUES",
    "Certainty",
    "FindingMention",
    "Severity",
    "Side",
    "easy_language",
    "mentions_for_labels",
    "negative_sentence",
    "positive_sentence",
    "render_findings",
    "render_impression",
    "render_indication",
]
