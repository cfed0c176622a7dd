"""The dataset manifest: one JSON file listing every slide with centre, split, label type,
resolution and file paths (relative to the manifest's folder)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ugafl-manifest/1"
LABEL_TYPES = ("negative", "itc", "micro", "macro")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class TumourRegion:
    """One connected tumour region, measured on the exact mask."""

    greatest_dimension_um: float
    area_um2: float
    pattern: str


@dataclass(frozen=True)
class SlideRecord:
    """One slide. Paths are relative to the manifest's folder; `mpp` is level 0's µm/px."""

    slide_id: str
    centre: str
    split: str
    label_type: str
    path: str
    format: str
    mpp: float
    width: int
    height: int
    levels: int
    mask: str
    mask_mpp: float
    rater_masks: tuple[str, ...] = ()
    tumour_regions: tuple[TumourRegion, ...] = ()
    seed: int = 0


@dataclass
class Manifest:
    """A dataset: its slides, and the generator settings that made it (if synthetic)."""

    root: Path
    slides: list[SlideRecord]
    info: dict = field(default_factory=dict)

    def select(self, centre: str | None = None, split: str | None = None) -> list[SlideRecord]:
        """Slides of one centre and/or split, in manifest order."""
        return [s for s in self.slides if (centre is None or s.centre == centre) and (split is None or s.split == split)]

    @property
    def centres(self) -> list[str]:
        """Centre names in first-seen order."""
        return list(dict.fromkeys(s.centre for s in self.slides))

    def path_of(self, relative: str) -> Path:
        """Absolute path of a file named in the manifest."""
        return self.root / relative

    def save(self) -> Path:
        """Writes manifest.json atomically (temp file, then rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / MANIFEST_NAME
        payload = {"format": MANIFEST_FORMAT, "info": self.info, "slides": [asdict(s) for s in self.slides]}
        return atomic_write_text(target, json.dumps(payload, indent=1))


def _record(raw: dict, where: str) -> SlideRecord:
    try:
        regions = tuple(TumourRegion(**r) for r in raw.get("tumour_regions", ()))
        record = SlideRecord(**{**raw, "rater_masks": tuple(raw.get("rater_masks", ())), "tumour_regions": regions})
    except TypeError as error:
        raise DataError(f"{where}: malformed slide entry {raw.get('slide_id', '?')}: {error}") from None
    if record.split not in SPLITS:
        raise DataError(f"{where}: slide {record.slide_id}: split {record.split!r} is not one of {SPLITS}")
    if record.label_type not in LABEL_TYPES:
        raise DataError(f"{where}: slide {record.slide_id}: label_type {record.label_type!r} is not one of {LABEL_TYPES}")
    return record


def load_manifest(data_dir: str | Path) -> Manifest:
    """Reads DIR/manifest.json (or the file itself if a .json path is given)."""
    path = Path(data_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no dataset manifest here; create one with `ugafl synth --out {path.parent}`")
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; a dataset manifest is UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("slides", []), list) \
            or not all(isinstance(raw, dict) for raw in payload.get("slides", [])):
        raise DataError(f"{path}: not a dataset manifest (expected an object with a list of slides)")
    if payload.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: format {payload.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    slides = [_record(raw, str(path)) for raw in payload.get("slides", [])]
    return Manifest(root=path.parent, slides=slides, info=payload.get("info", {}))
