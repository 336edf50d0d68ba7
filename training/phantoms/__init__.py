"""Procedural frontal chest radiographs (PA and AP) with labels, masks and report text.

The phantoms train and test the demo model where no real data may be used. Each image is
drawn from anatomy (lungs with branching vessels, mediastinum with trachea and aortic knob,
heart, hemidiaphragms with a gastric bubble, posterior and anterior ribs, clavicles, spine,
humeral heads, scapulae, soft tissue and breast shadows) with patient variation (body size,
soft tissue, in-plane rotation, spine offset, inspiration, exposure, gamma, quantum noise and
mottle). Generation is deterministic: image ``index`` of the dataset with ``seed`` is always
the same, whatever process draws it.

Signatures (patient right is on the viewer's left):

==========================  ====================================================================
Cardiomegaly                cardiothoracic ratio 0.56-0.70 (normal hearts 0.36-0.47)
Enlarged Cardiomediastinum  upper mediastinum 1.9-2.4x its normal width, lobulated contour
Pleural Effusion            basal fluid with a meniscus rising laterally; blunted costophrenic
                            angle (small), to about a third (moderate) or half (large) of the
                            lung height; left, right or bilateral
Pneumothorax                dark rim without vessel markings between the chest wall and a
                            bright visceral pleural edge; small (apical), moderate, large
Consolidation               dense homogeneous lobar opacity with air bronchograms; the right
                            upper lobe is bounded by the minor fissure
Lung Opacity                patchy, ill-defined ground-glass opacity in one lobe
Pneumonia                   a cluster of 22-33 small fluffy acinar nodules in one lobe;
                            always also labelled Lung Opacity (as CheXpert reports do)
Edema                       bilateral perihilar haze (bat wing) with indistinct vessels and
                            septal lines at the lung bases
Atelectasis                 one or two plate-like linear bands in the lower lungs
Lung Lesion                 solitary round, dense, sharply marginated nodule (22-29 mm) or
                            mass (39-53 mm at a 430 mm field)
Fracture                    3-4 adjacent lateral rib fractures in a line, each displaced (gap,
                            step-offset of about two rib widths) with a fusiform healing
                            callus; or a clavicle fracture with a step
Support Devices             endotracheal tube, nasogastric tube, central venous catheter (IJ or
                            subclavian), PICC, pacemaker with leads: bright radiopaque lines
Pleural Other               lobulated pleural thickening along the lateral chest wall (sparing
                            the costophrenic angle) or an apical cap
Lobes                       boxes in lung-local coordinates (:data:`LOBES`); the findings of
                            one study go to different lobes
No Finding                  none of the twelve pathologies above (support devices allowed,
                            as in CheXpert)
==========================  ====================================================================

Prevalence with the default :class:`PhantomConfig` (2000 images, seed 0): every pathology
positive in 18-21 % of images, Lung Opacity 27 % (its own 10 % plus every pneumonia),
Support Devices 26 % (50 % of AP, 12 % of PA views), No Finding 22 %, AP views 35 %.
Uncertain labels are 5 % of drawn pathologies (about 1 % of images per label): they are
drawn faintly (borderline heart size, trace fluid, a thin apical pleural edge, a small faint
nodule, a rib crack without displacement) and hedged in the text. Absent findings are stated
as negative for some labels ("No pneumothorax.") and left blank for the rest.
"""

from training.phantoms._dicom import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    DicomVariant,
    phantom_dataset,
    sample_variant,
)
from training.phantoms._findings import LOBES, PATHOLOGIES, DrawnFinding
from training.phantoms._generate import (
    Phantom,
    PhantomConfig,
    generate_phantom,
    iter_phantoms,
    measure_ctr,
    subject_plan,
)
from training.phantoms._writer import (
    CSV_COLUMNS,
    CSV_NAME,
    FORMATS,
    WriteResult,
    phantom_row,
    write_phantoms,
)

__all__ = [
    "CR_IMAGE_STORAGE",
    "CSV_COLUMNS",
    "CSV_NAME",
    "DX_PRESENTATION_STORAGE",
    "FORMATS",
    "LOBES",
    "PATHOLOGIES",
    "DicomVariant",
    "DrawnFinding",
    "Phantom",
    "PhantomConfig",
    "WriteResult",
    "generate_phantom",
    "iter_phantoms",
    "measure_ctr",
    "phantom_dataset",
    "phantom_row",
    "sample_variant",
    "subject_plan",
    "write_phantoms",
]
