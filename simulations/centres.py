"""The five synthetic centres, named after the paper's. Each differs as real centres do: H&E
stain vectors and intensity, glass background, scanner blur, noise and JPEG quality, and beyond
colour, section thickness, fixation artefacts and the mix of tumour growth patterns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Ruifrok & Johnston's optical-density vectors (R, G, B), the usual reference for H&E.
HEMATOXYLIN = (0.65, 0.70, 0.29)
EOSIN = (0.07, 0.99, 0.11)
GROWTH_PATTERNS = ("solid", "glandular", "discohesive")


@dataclass(frozen=True)
class CentreProfile:
    """How one centre's slides look. Lengths in µm; colours as 0-255 RGB; OD in absorbance units."""

    name: str
    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    hematoxylin_strength: float  # OD of a dense nucleus
    eosin_strength: float  # OD of dense stroma
    background: tuple[float, float, float]  # glass colour
    blur_um: float  # scanner point-spread sigma
    noise: float  # sensor noise sd, 0-255 units
    jpeg_quality: int
    thickness: float  # section thickness relative to RUMC's (darker, denser, more overlap)
    smudge_um: float  # poor fixation: chromatin detail lost (blur of nuclei only)
    retraction: float  # fixation artefact: share of tumour borders with a retraction cleft
    crush: float  # share of lymphoid tissue with crush/streak artefact
    patterns: dict[str, float] = field(default_factory=dict)  # tumour growth pattern mix
    tumour_nucleus_um: tuple[float, float] = (5.0, 8.0)  # tumour nucleus radius range
    file_format: str = "tiff"  # "svs" (Aperio) or "tiff" (generic pyramidal TIFF)

    def stain_matrix(self) -> np.ndarray:
        """Rows: unit OD vectors of hematoxylin and eosin."""
        m = np.array([self.hematoxylin, self.eosin], dtype=np.float32)
        return m / np.linalg.norm(m, axis=1, keepdims=True)


CENTRES: dict[str, CentreProfile] = {
    profile.name: profile
    for profile in (
        CentreProfile(
            name="RUMC", hematoxylin=HEMATOXYLIN, eosin=EOSIN, hematoxylin_strength=1.0, eosin_strength=0.55,
            background=(242, 241, 245), blur_um=0.6, noise=2.0, jpeg_quality=92, thickness=1.0, smudge_um=0.0,
            retraction=0.1, crush=0.0, patterns={"solid": 0.65, "glandular": 0.25, "discohesive": 0.10},
            file_format="svs",
        ),
        CentreProfile(
            name="UMCU", hematoxylin=(0.55, 0.78, 0.30), eosin=(0.10, 0.95, 0.20), hematoxylin_strength=1.25,
            eosin_strength=0.5, background=(236, 236, 240), blur_um=0.9, noise=3.0, jpeg_quality=85, thickness=1.3,
            smudge_um=0.5, retraction=0.2, crush=0.05, patterns={"solid": 0.45, "glandular": 0.35, "discohesive": 0.20},
            tumour_nucleus_um=(4.5, 7.5), file_format="tiff",
        ),
        CentreProfile(
            name="LabPON", hematoxylin=(0.70, 0.68, 0.22), eosin=(0.03, 0.95, 0.05), hematoxylin_strength=0.85,
            eosin_strength=0.8, background=(246, 244, 244), blur_um=0.8, noise=4.5, jpeg_quality=70, thickness=0.85,
            smudge_um=0.3, retraction=0.4, crush=0.0, patterns={"solid": 0.20, "glandular": 0.40, "discohesive": 0.40},
            tumour_nucleus_um=(4.5, 7.0), file_format="svs",
        ),
        CentreProfile(
            name="CWZ", hematoxylin=(0.60, 0.72, 0.35), eosin=(0.12, 0.90, 0.25), hematoxylin_strength=0.7,
            eosin_strength=0.4, background=(240, 236, 225), blur_um=1.5, noise=3.0, jpeg_quality=80, thickness=0.9,
            smudge_um=1.1, retraction=0.5, crush=0.1, patterns={"solid": 0.35, "glandular": 0.25, "discohesive": 0.40},
            tumour_nucleus_um=(4.5, 7.0), file_format="tiff",
        ),
        # The hardest: blue, thick, blurred, poorly fixed, and mostly discohesive tumour that
        # resembles lymphoid tissue. Colour augmentation cannot undo the morphology.
        CentreProfile(
            name="RST", hematoxylin=(0.74, 0.64, 0.18), eosin=(0.25, 0.92, 0.22), hematoxylin_strength=1.35,
            eosin_strength=0.45, background=(230, 233, 238), blur_um=1.8, noise=5.0, jpeg_quality=65, thickness=1.4,
            smudge_um=1.2, retraction=0.1, crush=0.2, patterns={"solid": 0.15, "glandular": 0.15, "discohesive": 0.70},
            tumour_nucleus_um=(4.0, 6.5), file_format="tiff",
        ),
    )
}


# The benchmark's world (docs/results/benchmark/): the same five centres, each external one shifted
# far enough from RUMC that the central model loses at least 0.10 Dice there, in more than colour
# (optics, noise and compression, section thickness, fixation, tumour morphology). Calibrated on the
# external centres' training (candidate) slides only, then frozen: a change is a new world.
BENCHMARK_CENTRES: dict[str, CentreProfile] = {
    "RUMC": CENTRES["RUMC"],
    # Thick sections on a soft-focus scanner; smaller tumour nuclei, more discohesive growth.
    "UMCU": replace(CENTRES["UMCU"], hematoxylin_strength=1.3, blur_um=1.1, thickness=1.35, smudge_um=0.7,
                    patterns={"solid": 0.40, "glandular": 0.30, "discohesive": 0.30}, tumour_nucleus_um=(4.4, 7.2)),
    # Pale hematoxylin under strong eosin, heavy JPEG compression and sensor noise, a soft scanner,
    # many retraction clefts and mostly discohesive tumour.
    "LabPON": replace(CENTRES["LabPON"], hematoxylin_strength=0.65, eosin_strength=1.0, noise=6.0, jpeg_quality=55,
                      blur_um=1.4, smudge_um=0.8, thickness=1.1, retraction=0.6,
                      patterns={"solid": 0.15, "glandular": 0.20, "discohesive": 0.65}),
    # Out of focus and poorly fixed: chromatin detail lost, a little crush artefact.
    "CWZ": replace(CENTRES["CWZ"], hematoxylin_strength=0.75, blur_um=1.7, smudge_um=1.0, crush=0.08),
    # The demo's hardest centre, a little less discohesive and crushed.
    "RST": replace(CENTRES["RST"], blur_um=1.4, crush=0.12, patterns={"solid": 0.30, "glandular": 0.25, "discohesive": 0.45}),
}

# benchmark-2: benchmark-1 missed one condition on its test slides (LabPON 0.838 against RUMC's
# 0.933, 0.095 apart where at least 0.10 was asked), so LabPON was made harder: a softer scanner,
# more smudged chromatin, thicker sections, smaller tumour nuclei (calibrated again on the separate
# draw, with a wider margin). Every arm runs on benchmark-2.
BENCHMARK_2_CENTRES: dict[str, CentreProfile] = {
    **BENCHMARK_CENTRES,
    "LabPON": replace(BENCHMARK_CENTRES["LabPON"], blur_um=1.8, smudge_um=1.2, thickness=1.3, tumour_nucleus_um=(4.2, 6.5)),
}

# World name -> centre profiles. "demo" is the demo's and the tests' world; "benchmark-2" the benchmark's.
WORLDS: dict[str, dict[str, CentreProfile]] = {"demo": CENTRES, "benchmark-1": BENCHMARK_CENTRES,
                                               "benchmark-2": BENCHMARK_2_CENTRES}


def get_centre(name: str, world: str = "demo") -> CentreProfile:
    """The profile of a centre by name (case-sensitive, as in the paper) in `world`."""
    from ugafl.common.errors import ConfigError

    if world not in WORLDS:
        raise ConfigError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
    centres = WORLDS[world]
    if name not in centres:
        raise ConfigError(f"unknown centre {name!r}; known: {', '.join(centres)}")
    return centres[name]
