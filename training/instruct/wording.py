"""How instructions and template answers name each CheXpert observation.

Answers built here carry no attributes (side, size, severity): those are not in the labels,
and inventing them would teach the model to contradict the report it was shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from report_language.labels import CHEXPERT_LABELS, NO_FINDING


@dataclass(frozen=True)
class LabelWording:
    """Words for one observation.

    Parameters
    ----------
    noun
        Lower-case name without article, as listed in answers ("pleural effusion").
    phrase
        With its article where English needs one ("a pleural effusion", "pulmonary edema").
    plural
        Whether the noun is plural ("support devices"): selects "are"/"they" in templates.
    questions
        Binary questions a radiologist would type about it.
    """

    noun: str
    phrase: str
    plural: bool = False
    questions: tuple[str, ...] = ()

    @property
    def there_is(self) -> str:
        """``"there is a pleural effusion"`` / ``"there are support devices"``."""
        return f"there {'are' if self.plural else 'is'} {self.phrase}"

    @property
    def there_is_no(self) -> str:
        """``"there is no pleural effusion"`` / ``"there are no support devices"``."""
        return f"there {'are' if self.plural else 'is'} no {self.noun}"

    @property
    def cannot_exclude(self) -> str:
        """``"a pleural effusion cannot be excluded"``."""
        return f"{self.phrase} cannot be excluded"

    @property
    def pronoun(self) -> str:
        """``"it is"`` or ``"they are"``."""
        return "they are" if self.plural else "it is"


def _questions(phrase: str, noun: str, *extra: str) -> tuple[str, ...]:
    return (
        f"Is there {phrase}?",
        f"Does the patient have {phrase}?",
        f"Any {noun}?",
        f"Do you see {phrase}?",
        *extra,
    )


#: Wording of every observation except No Finding.
LABEL_WORDING: Final[dict[str, LabelWording]] = {
    "Atelectasis": LabelWording(
        "atelectasis", "atelectasis",
        questions=_questions("atelectasis", "atelectasis", "Is any part of the lung collapsed?"),
    ),
    "Cardiomegaly": LabelWording(
        "cardiomegaly", "cardiomegaly",
        questions=_questions("cardiomegaly", "cardiomegaly", "Is the heart enlarged?"),
    ),
    "Consolidation": LabelWording(
        "consolidation", "consolidation",
        questions=_questions("consolidation", "consolidation", "Is there a focal consolidation?"),
    ),
    "Edema": LabelWording(
        "pulmonary edema", "pulmonary edema",
        questions=_questions("pulmonary edema", "edema", "Is there fluid overload in the lungs?"),
    ),
    "Enlarged Cardiomediastinum": LabelWording(
        "enlarged cardiomediastinum", "an enlarged cardiomediastinal silhouette",
        questions=(
            "Is the mediastinum widened?",
            "Is the cardiomediastinal silhouette enlarged?",
            "Is there an enlarged cardiomediastinum?",
            "Any widening of the mediastinum?",
        ),
    ),
    "Fracture": LabelWording(
        "fracture", "a fracture",
        questions=_questions("a fracture", "fracture", "Are there any fractures?",
                             "Are any bones broken?"),
    ),
    "Lung Lesion": LabelWording(
        "lung lesion", "a lung lesion",
        questions=_questions("a lung lesion", "lung lesion", "Is there a nodule or mass?"),
    ),
    "Lung Opacity": LabelWording(
        "lung opacity", "a lung opacity",
        questions=_questions("a lung opacity", "opacity"),
    ),
    "Pleural Effusion": LabelWording(
        "pleural effusion", "a pleural effusion",
        questions=_questions("a pleural effusion", "effusion", "Is there an effusion?",
                             "Is there fluid around the lungs?"),
    ),
    "Pleural Other": LabelWording(
        "other pleural abnormality", "a pleural abnormality other than effusion",
        questions=(
            "Is there pleural thickening?",
            "Any other pleural abnormality?",
            "Is there a pleural abnormality besides effusion?",
        ),
    ),
    "Pneumonia": LabelWording(
        "pneumonia", "pneumonia",
        questions=_questions("pneumonia", "pneumonia", "Is this pneumonia?",
                             "Are there signs of pneumonia?"),
    ),
    "Pneumothorax": LabelWording(
        "pneumothorax", "a pneumothorax",
        questions=_questions("a pneumothorax", "pneumothorax", "Is the lung collapsed?"),
    ),
    "Support Devices": LabelWording(
        "support devices", "support devices", plural=True,
        questions=(
            "Are there any support devices?",
            "Are there any lines or tubes?",
            "Any lines or tubes?",
            "Does the patient have any devices in place?",
        ),
    ),
}

if set(LABEL_WORDING) != set(CHEXPERT_LABELS) - {NO_FINDING}:  # pragma: no cover
    raise RuntimeError("LABEL_WORDING must cover every CheXpert label except No Finding")

#: Plain medical facts per observation, one or two sentences, for the explanation task.
GLOSSARY: Final[dict[str, str]] = {
    "Atelectasis": (
        "Atelectasis is a partial collapse of lung tissue, so that part of the lung holds less "
        "air than normal. It is common after surgery, with shallow breathing or when an airway "
        "is blocked."
    ),
    "Cardiomegaly": (
        "Cardiomegaly means the heart looks larger than normal on the X-ray. It can be caused "
        "by heart failure, high blood pressure or valve disease."
    ),
    "Consolidation": (
        "Consolidation means that the air spaces of part of the lung are filled with fluid, "
        "pus or cells instead of air. Infection (pneumonia) is the most common cause."
    ),
    "Edema": (
        "Pulmonary edema is excess fluid in the lungs. It is most often due to the heart not "
        "pumping well (heart failure) or to fluid overload."
    ),
    "Enlarged Cardiomediastinum": (
        "An enlarged cardiomediastinum means the central shadow of the chest, made of the heart, "
        "large vessels and the space between the lungs, is wider than normal. Causes include "
        "an enlarged heart, a widened aorta, fluid or enlarged lymph nodes."
    ),
    "Fracture": (
        "A fracture is a break in a bone; on a chest X-ray usually of a rib, the collarbone or a "
        "vertebra. It may be new or old and healed."
    ),
    "Lung Lesion": (
        "A lung lesion is a localised abnormal spot in the lung, such as a nodule or a mass. "
        "Many are harmless, but some need follow-up imaging to rule out cancer."
    ),
    "Lung Opacity": (
        "A lung opacity is an area of the lung that looks whiter than normal on the X-ray "
        "because it holds less air. It can be caused by infection, fluid, collapse or scarring."
    ),
    "Pleural Effusion": (
        "A pleural effusion is a build-up of fluid between the lung and the chest wall. It can "
        "come from heart failure, infection, inflammation or cancer."
    ),
    "Pleural Other": (
        "This refers to an abnormality of the pleura, the lining around the lungs, other than "
        "fluid: for example thickening, scarring or calcification, often from old inflammation "
        "or asbestos exposure."
    ),
    "Pneumonia": (
        "Pneumonia is an infection of the lung that fills air spaces with fluid or pus. It "
        "causes cough, fever and shortness of breath and is treated with antibiotics when "
        "bacterial."
    ),
    "Pneumothorax": (
        "A pneumothorax is air between the lung and the chest wall, which lets the lung "
        "collapse partly or completely. A large one can be an emergency and may need a chest "
        "tube."
    ),
    "Support Devices": (
        "Support devices are medical lines, tubes and implants seen on the X-ray, such as "
        "breathing tubes, feeding tubes, central venous catheters or pacemakers. The report "
        "checks that their tips are in the right place."
    ),
}

if set(GLOSSARY) != set(LABEL_WORDING):  # pragma: no cover
    raise RuntimeError("GLOSSARY must cover every label of LABEL_WORDING")

#: Answer when the report has no positive observation (findings QA, list all).
NO_FINDINGS_ANSWER: Final[str] = "No findings."


def join_nouns(nouns: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    if len(nouns) <= 1:
        return "".join(nouns)
    return f"{', '.join(nouns[:-1])} and {nouns[-1]}"


def capitalise(text: str) -> str:
    """Upper-case the first character only (``str.capitalize`` lowers the rest)."""
    return text[:1].upper() + text[1:]
