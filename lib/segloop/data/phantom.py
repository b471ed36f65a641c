"""Synthetic abdominal CT phantoms with organ and tumour labels.

Each case is an axis-aligned CT volume in Hounsfield units (int16) with an exact label map
(uint8, ``liver=1, spleen=2, kidney=3, tumor=4``; 0 is background), and a second map of
structures the campaign's label map does not have (:data:`NOVEL_STRUCTURES`: the aorta, the
vertebral column and the largest bowel gas pocket, as far as they are visible), the ground truth
for segmenting a structure nobody labelled.

Anatomy is defined in RAS+ world millimetres (+x towards the patient's right, +y anterior,
+z superior) and then sampled on a voxel grid whose affine is either

* ``"RAS"``: voxel index i grows towards +x (patient's right), j towards anterior;
* ``"LPS"``: i grows towards the patient's left and j towards posterior (how a DICOM series
  converted without reorientation is stored).

Either way the liver lies on the patient's right in world space, so an orientation bug in the
pipeline shows up as a mirrored segmentation.

Intensities (HU) follow a portal-venous abdominal CT: fat about -100, muscle/soft tissue 30-50,
liver 50-80, spleen a little brighter or darker than liver, kidneys enhanced (130-190), bone 300+,
hypodense tumours 25-60 HU below their host organ, air in the bowel, Gaussian noise 8-20 HU.

**Mixed populations** (``draw_population``, asked for explicitly): active learning can only help
where cases differ, so a campaign pool can mix subpopulations a model trained on the common case
gets wrong: contrast phase (portal-venous, arterial: bright kidney cortex and aorta, liver less
enhanced; native: kidneys and aorta at soft-tissue density, organs close to each other and
tumours barely darker), body size (small patients in the same field of view), tumour burden
(none, 1-3, 5-9) and rare anatomy (situs inversus: liver on the left, spleen on the right). The
population is drawn from its own random stream, so the default cases of a seed never change.
"""

from dataclasses import asdict, dataclass, replace
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
from scipy import ndimage

from segloop.labels import DEFAULT_LABELS

LIVER, SPLEEN, KIDNEY, TUMOR = (DEFAULT_LABELS[k] for k in ("liver", "spleen", "kidney", "tumor"))
# Drawn in every case but never in the label map: clicks-only segmentation of unlabelled structures.
NOVEL_STRUCTURES: Dict[str, int] = {"aorta": 1, "vertebra": 2, "bowel_gas": 3}


@dataclass
class CaseSpec:
    """The random draw behind one case; saved next to the ground truth for reproducibility."""

    case_id: str
    orientation: str  # "RAS" or "LPS"
    shape: Tuple[int, int, int]  # voxels (i, j, k)
    spacing: Tuple[float, float, float]  # mm per voxel along i, j, k
    body_scale: float  # 1.0 = adult abdomen about 330 mm wide
    noise_hu: float
    liver_hu: float
    tumors: int
    # Subpopulation (defaults: the typical portal-venous adult with normal anatomy).
    phase: str = "portal"  # "portal", "arterial" or "native" (no contrast)
    situs: str = "solitus"  # "solitus" or "inversus" (mirrored left-right)
    burden: str = "typical"  # tumour burden: "none", "typical" (1-3) or "many" (5-9)
    population: str = "typical"  # the subpopulation's name, for reports


# HU per contrast phase other than portal-venous (what ``render_case`` draws by default): kidney
# parenchyma range, aorta, liver range and how much darker than its host organ a tumour is.
PHASE_HU = {
    "arterial": {"kidney": (210.0, 260.0), "aorta": 300.0, "liver": (45.0, 60.0), "tumor_contrast": (15.0, 40.0)},
    "native": {"kidney": (28.0, 38.0), "aorta": 42.0, "liver": (50.0, 62.0), "tumor_contrast": (8.0, 20.0)},
}


def _grid(shape, spacing, orientation, rng) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """World RAS coordinates (mm) of the voxel centres, as broadcastable 1-D arrays, and the affine."""
    signs = np.array([1.0, 1.0, 1.0]) if orientation == "RAS" else np.array([-1.0, -1.0, 1.0])
    direction = np.diag(signs * np.asarray(spacing))
    # Centre the volume on the abdomen with a few mm of random table offset.
    centre = np.array([0.0, 0.0, 0.0]) + rng.uniform(-8, 8, size=3)
    origin = centre - direction @ ((np.asarray(shape) - 1) / 2.0)
    affine = np.eye(4)
    affine[:3, :3] = direction
    affine[:3, 3] = origin
    axes = [origin[a] + direction[a, a] * np.arange(shape[a]) for a in range(3)]
    x = axes[0][:, None, None]
    y = axes[1][None, :, None]
    z = axes[2][None, None, :]
    return x, y, z, affine


def _smooth_field(rng, shape, sigma_vox, amplitude) -> np.ndarray:
    """Low-frequency random field (mean 0, max |value| about ``amplitude``) on a coarse grid."""
    coarse = rng.standard_normal(tuple(max(4, s // 8) for s in shape))
    coarse = ndimage.gaussian_filter(coarse, sigma=max(1.0, sigma_vox / 8))
    coarse *= amplitude / (np.abs(coarse).max() + 1e-6)
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    return ndimage.zoom(coarse, zoom, order=1)[: shape[0], : shape[1], : shape[2]]


def _ellipsoid(x, y, z, centre, radii, wobble: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of an ellipsoid (mm); ``wobble`` perturbs the normalised radius (irregular shape)."""
    r2 = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    if wobble is not None:
        return r2 <= (1.0 + wobble) ** 2
    return r2 <= 1.0


def fitting_body_scale(shape: Tuple[int, int, int], spacing: Tuple[float, float, float]) -> float:
    """Largest patient (1.0 = adult) that fits the field of view; small FOVs image smaller patients."""
    return round(float(min(1.0, 0.88 * shape[0] * spacing[0] / 330.0, 0.9 * shape[2] * spacing[2] / 220.0)), 4)


def draw_spec(case_id: str, rng: np.random.Generator) -> CaseSpec:
    """Draw acquisition and anatomy parameters for one case."""
    in_plane = float(rng.uniform(0.6, 1.6))
    slice_mm = float(rng.uniform(1.5, 5.0))
    fov_xy = float(rng.uniform(300, 400))
    nxy = int(min(round(fov_xy / in_plane), 320))
    fov_z = float(rng.uniform(170, 240))
    nz = int(np.clip(round(fov_z / slice_mm), 36, 120))
    spacing = (round(in_plane, 4), round(in_plane, 4), round(slice_mm, 4))
    return CaseSpec(
        case_id=case_id,
        orientation=str(rng.choice(["RAS", "LPS"])),
        shape=(nxy, nxy, nz),
        spacing=spacing,
        body_scale=fitting_body_scale((nxy, nxy, nz), spacing),
        noise_hu=round(float(rng.uniform(8, 20)), 2),
        liver_hu=round(float(rng.uniform(50, 80)), 2),
        tumors=int(rng.integers(1, 4)),
    )


def draw_population(spec: CaseSpec, rng: np.random.Generator) -> CaseSpec:
    """``spec`` moved into a randomly drawn subpopulation: contrast phase (60% portal, 20% arterial,
    20% native), body size (25% small: 0.72-0.85 of the largest patient that fits), tumour burden
    (25% none, 50% 1-3, 25% 5-9) and anatomy (10% situs inversus)."""
    phase = str(rng.choice(["portal", "arterial", "native"], p=[0.6, 0.2, 0.2]))
    small = bool(rng.uniform() < 0.25)
    burden = str(rng.choice(["none", "typical", "many"], p=[0.25, 0.5, 0.25]))
    situs = "inversus" if rng.uniform() < 0.1 else "solitus"
    tumors = {"none": 0, "typical": int(rng.integers(1, 4)), "many": int(rng.integers(5, 10))}[burden]
    liver_hu = spec.liver_hu if phase == "portal" else round(float(rng.uniform(*PHASE_HU[phase]["liver"])), 2)
    scale = spec.body_scale * float(rng.uniform(0.72, 0.85)) if small else spec.body_scale
    parts = [p for p in (phase if phase != "portal" else "", "small" if small else "",
                         f"burden-{burden}" if burden != "typical" else "", situs if situs != "solitus" else "") if p]
    return replace(
        spec, phase=phase, situs=situs, burden=burden, tumors=tumors, liver_hu=liver_hu,
        body_scale=round(scale, 4), population="+".join(parts) or "typical",
    )


class RenderedCase(NamedTuple):
    image: np.ndarray  # HU, int16 (I, J, K)
    label: np.ndarray  # uint8 (I, J, K), DEFAULT_LABELS
    novel: np.ndarray  # uint8 (I, J, K), NOVEL_STRUCTURES
    affine: np.ndarray  # 4 x 4, voxel -> RAS mm


def render_case(spec: CaseSpec, rng: np.random.Generator) -> RenderedCase:
    """Render one case: the image, its label map, the novel structures' map and the affine."""
    x, y, z, affine = _grid(spec.shape, spec.spacing, spec.orientation, rng)
    if spec.situs == "inversus":
        x = -x  # the anatomy is drawn mirrored: liver on the patient's left
    phase = PHASE_HU.get(spec.phase)
    shape = spec.shape
    s = spec.body_scale
    jitter = lambda mm: rng.uniform(-mm, mm) * s  # noqa: E731  (small random organ displacement)

    image = np.full(shape, -1000.0, dtype=np.float32)  # air
    label = np.zeros(shape, dtype=np.uint8)

    # Body: elliptic cylinder, fat shell around a soft-tissue core.
    body_a, body_b = 165 * s * rng.uniform(0.9, 1.05), 115 * s * rng.uniform(0.9, 1.05)
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    core = (x / (body_a - 18 * s)) ** 2 + (y / (body_b - 15 * s)) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    core = np.broadcast_to(core, shape)
    image[body] = -100
    image[core] = 35

    # Lung bases above the liver dome (posterior, superior), bowel gas pockets.
    lung_z = 95 * s
    lungs = core & (z > lung_z) & (y < 20 * s)
    image[np.broadcast_to(lungs, shape)] = -850
    gas = np.zeros(shape, bool)
    for _ in range(int(rng.integers(4, 9))):
        c = (rng.uniform(-60, 60) * s, rng.uniform(10, 70) * s, rng.uniform(-60, 30) * s)
        pocket = _ellipsoid(x, y, z, c, np.array([12, 10, 14]) * s * rng.uniform(0.6, 1.4))
        image[pocket] = -900
        gas |= pocket

    # Spine and aorta: bright structures that are not labelled.
    spine = ((x / (20 * s)) ** 2 + ((y + 70 * s) / (20 * s)) ** 2 <= 1.0) & np.ones_like(z, dtype=bool)
    image[spine] = 450
    aorta = (((x + 10 * s) / (11 * s)) ** 2 + ((y + 35 * s) / (11 * s)) ** 2 <= 1.0) & np.ones_like(z, dtype=bool)
    image[aorta] = phase["aorta"] if phase else 170

    wobble = _smooth_field(rng, shape, sigma_vox=20, amplitude=0.12)

    # Liver: large ellipsoid on the patient's right (+x in RAS), upper abdomen.
    liver_c = np.array([70 * s + jitter(8), 5 * s + jitter(8), 45 * s + jitter(10)])
    liver_r = np.array([68, 82, 72]) * s * rng.uniform(0.88, 1.12, size=3)
    liver = _ellipsoid(x, y, z, liver_c, liver_r, wobble) & core & ~np.broadcast_to(lungs, shape)
    # A notch medially so the liver is not a plain ellipsoid.
    liver &= ~_ellipsoid(x, y, z, liver_c + np.array([-55, -40, -30]) * s, np.array([35, 40, 40]) * s)
    image[liver] = spec.liver_hu
    label[liver] = LIVER

    # Spleen: left posterior upper quadrant.
    spleen_hu = spec.liver_hu + rng.choice([-1, 1]) * rng.uniform(8, 20)
    spleen_c = np.array([-80 * s + jitter(6), -35 * s + jitter(6), 45 * s + jitter(8)])
    spleen = _ellipsoid(x, y, z, spleen_c, np.array([24, 48, 52]) * s * rng.uniform(0.85, 1.15, 3), wobble)
    spleen &= core & ~liver
    image[spleen] = spleen_hu
    label[spleen] = SPLEEN

    # Kidneys: both sides, posterior, lower; enhanced parenchyma.
    kidney_hu = rng.uniform(130, 190)
    if phase:
        kidney_hu = rng.uniform(*phase["kidney"])
    for side in (1, -1):
        c = np.array([side * 62 * s + jitter(5), -55 * s + jitter(5), -15 * s + jitter(8)])
        kidney = _ellipsoid(x, y, z, c, np.array([25, 28, 52]) * s * rng.uniform(0.88, 1.12, 3), wobble)
        kidney &= core & ~liver & ~spleen
        image[kidney] = kidney_hu
        label[kidney] = KIDNEY

    # Tumours: hypodense spheres inside the liver (and sometimes one in a kidney).
    hosts = [(LIVER, liver_c, liver_r * 0.55)] * spec.tumors
    if rng.uniform() < 0.3 and spec.burden != "none":
        hosts.append((KIDNEY, np.array([62 * s, -55 * s, -15 * s]), np.array([10, 10, 25]) * s))
    for host, centre, spread in hosts:
        c = centre + rng.uniform(-1, 1, 3) * spread
        radius = rng.uniform(7, 18) * s
        tumor = _ellipsoid(x, y, z, c, np.array([radius, radius, radius]) * rng.uniform(0.8, 1.2, 3))
        tumor &= label == host
        contrast = rng.uniform(25, 60)
        if phase:
            contrast = rng.uniform(*phase["tumor_contrast"])
        image[tumor] = (spec.liver_hu if host == LIVER else kidney_hu) - contrast
        label[tumor] = TUMOR

    # Acquisition: partial-volume blur in-plane/through-plane, then noise.
    sigma = [0.6 / sp for sp in spec.spacing]
    image = ndimage.gaussian_filter(image, sigma=[max(0.4, v) for v in sigma])
    image += rng.normal(0.0, spec.noise_hu, size=shape).astype(np.float32)
    image = np.clip(image, -1024, 3071).astype(np.int16)
    return RenderedCase(image, label, _novel_map(label, aorta, spine, gas), affine)


def _novel_map(label: np.ndarray, aorta: np.ndarray, spine: np.ndarray, gas: np.ndarray) -> np.ndarray:
    """What is visible of the unlabelled structures (drawn later structures cover earlier ones):
    the aorta, the vertebral column, and the largest connected part of the bowel gas."""
    free = label == 0
    novel = np.zeros(label.shape, np.uint8)
    novel[free & ~aorta & spine] = NOVEL_STRUCTURES["vertebra"]
    novel[free & aorta] = NOVEL_STRUCTURES["aorta"]
    pockets, count = ndimage.label(free & gas & ~spine & ~aorta)
    if count:
        sizes = np.bincount(pockets.ravel())
        sizes[0] = 0
        novel[pockets == int(np.argmax(sizes))] = NOVEL_STRUCTURES["bowel_gas"]
    return novel


def render_drawn_case(
    case_id: str,
    seed: int,
    index: int,
    shape: Optional[Tuple[int, int, int]] = None,
    spacing: Optional[Tuple[float, float, float]] = None,
    mixed: bool = False,
) -> Tuple[RenderedCase, Dict]:
    """Deterministic case ``index`` for ``seed``, whole: the rendered case and its spec dict.

    ``shape`` (voxels) and ``spacing`` (mm) fix the grid instead of drawing it, e.g. for benchmarks.
    ``mixed`` draws the case's subpopulation (``draw_population``) from a stream of its own.
    """
    rng = np.random.default_rng([seed, index])
    spec = draw_spec(case_id, rng)
    if shape is not None or spacing is not None:
        shape = tuple(shape or spec.shape)
        spacing = tuple(spacing or spec.spacing)
        spec = replace(spec, shape=shape, spacing=spacing, body_scale=fitting_body_scale(shape, spacing))
    if mixed:
        spec = draw_population(spec, np.random.default_rng([seed, index, 1]))
    return render_case(spec, rng), asdict(spec)


def generate_case(
    case_id: str,
    seed: int,
    index: int,
    shape: Optional[Tuple[int, int, int]] = None,
    spacing: Optional[Tuple[float, float, float]] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict]:
    """Deterministic case ``index`` for ``seed``: (image HU int16, label uint8, affine, spec dict)."""
    case, spec = render_drawn_case(case_id, seed, index, shape, spacing)
    return case.image, case.label, case.affine, spec
