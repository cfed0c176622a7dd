"""Which files make up one slide, so that a slide stored as several files counts once.

Most formats are one file. Those that are several, as OpenSlide reads them:
- DICOM WSI: one file (instance) per pyramid level, plus label and overview, all sharing one
  SeriesInstanceUID, in one folder, with or without a `.dcm` suffix. OpenSlide opens any one of them
  and finds the rest of the series in the same folder. A folder may hold several series.
- MIRAX: `X.mrxs` beside its data folder `X/`.
- Hamamatsu VMS: `X.vms` and the JPEG, map and optimisation files it names, beside it.

A slide is identified by a path whose name is stable: the file itself for a one-file slide, the
series' level-0 file for a DICOM series lying loose in a folder, and the folder for a subfolder
holding a multi-file slide's files (DICOM, MIRAX, VMS), the way PACS exports and scanners hand
them over; opening such a folder finds its one slide, or says what else it holds. Other
subfolders are not scanned. Files that are never slides (sidecars, DICOMDIR, non-image DICOM
objects such as reports) are left out; anything else is a candidate, and opening it says what is
wrong with it.

DICOM headers are read with pydicom (up to the pixel data, and only for files with the DICOM
magic), cached by path, size and modification time: a folder scan every poll reads each file once.
"""

from __future__ import annotations

import configparser
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ugafl.common.errors import SlideError
from ugafl.common.log import get_logger

log = get_logger("slide_files")

# Files that sit beside slides in an inbox but are never slides themselves.
NOT_SLIDES = {".md", ".txt", ".json", ".csv", ".xml", ".geojson", ".part", ".tmp", ".db", ".log"}
NOT_SLIDE_NAMES = {"dicomdir"}  # the DICOM media directory (an index, no pixels)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_DICOM_TAGS = ["SOPClassUID", "SeriesInstanceUID", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows"]
_VMS_KEYS = ("imagefile", "mapfile", "optimisationfile", "macroimage")


@dataclass(frozen=True)
class SlideFiles:
    """One slide: `path` names it (a file or a folder; its name is the slide's name), `open_path`
    is the file OpenSlide opens, `files` every file that belongs to it (to see it change), and
    `kind` one of "file", "dicom", "mirax", "vms", or "folder" (a subfolder holding one slide's
    files, resolved when it is opened: `resolve`)."""

    path: Path
    open_path: Path
    files: tuple[Path, ...]
    kind: str = "file"

    def signature(self) -> tuple[int, ...]:
        """(size, newest mtime in ns) of a one-file slide; (total size, newest mtime, file count)
        of a multi-file one. Changes while any of its files is still being written."""
        stats = [p.stat() for p in self.files]
        size, mtime = sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
        return (size, mtime) if len(self.files) == 1 and self.files[0] == self.path else (size, mtime, len(stats))


@dataclass(frozen=True)
class DicomHeader:
    """What grouping needs from a DICOM file's header (None: the header could not be read)."""

    sop_class: str | None
    series_uid: str | None
    flavor: str  # ImageType's third value: VOLUME, LABEL, OVERVIEW, THUMBNAIL ("" if absent)
    pixels: int  # level-0 size of this instance, width * height

    @property
    def is_wsi(self) -> bool:
        return self.sop_class == WSI_SOP_CLASS and bool(self.series_uid)


def is_dicom(path: Path) -> bool:
    """Whether the file starts like a DICOM Part 10 file (128-byte preamble, then "DICM")."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_header(path: Path) -> DicomHeader | None:
    """The grouping fields of a DICOM file's header; None when `path` is not DICOM, a header with
    None fields when it starts like DICOM but cannot be parsed."""
    if not is_dicom(path):
        return None
    try:
        st = path.stat()
    except OSError:  # gone since: not there to be a slide
        return None
    return _read_header(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8192)
def _read_header(path: str, size: int, mtime_ns: int) -> DicomHeader:
    import pydicom  # only when a DICOM file is there (0.5 s to import)

    try:
        with warnings.catch_warnings():  # a damaged header's invalid values: what counts is below
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")) or None
        image_type = list(ds.get("ImageType", []) or [])
        pixels = int(ds.get("TotalPixelMatrixColumns", 0) or 0) * int(ds.get("TotalPixelMatrixRows", 0) or 0)
        series = str(ds.get("SeriesInstanceUID", "") or "") or None
        return DicomHeader(sop_class, series, str(image_type[2]).upper() if len(image_type) > 2 else "", pixels)
    except Exception as error:  # noqa: BLE001 - pydicom raises many kinds on a damaged header: all mean unreadable
        log.debug("%s: DICOM header unreadable: %s", path, error)
        return DicomHeader(None, None, "", 0)


def _is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in NOT_SLIDES or path.name.lower() in NOT_SLIDE_NAMES


def _vms_parts(vms: Path) -> list[Path]:
    """The files a Hamamatsu .vms names (image tiles, map, optimisation), those that exist."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read_string(vms.read_text(errors="replace"))
    except (configparser.Error, OSError, UnicodeError):
        return []
    names = {value.strip() for section in parser.sections() for key, value in parser.items(section)
             if key.split("(")[0].strip() in _VMS_KEYS and value.strip()}
    return sorted(vms.parent / n for n in names if "/" not in n and "\\" not in n and (vms.parent / n).is_file())


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _level0_first(item: tuple[Path, DicomHeader]) -> tuple:
    path, header = item
    return (header.flavor != "VOLUME", -header.pixels, path.name)


def slides_in(folder: str | Path) -> list[SlideFiles]:
    """The slides directly in `folder` (an inbox): one entry per slide, sorted by path."""
    folder = Path(folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and not _is_sidecar(p)]
    slides: list[SlideFiles] = []
    claimed: set[Path] = set()
    series: dict[str, list[tuple[Path, DicomHeader]]] = {}
    for path in files:
        if path.suffix.lower() == ".vms":
            parts = _vms_parts(path)
            claimed.update(parts)
            slides.append(SlideFiles(path, path, (path, *parts), "vms"))
    for path in files:
        if path in claimed or path.suffix.lower() == ".vms":
            continue
        header = dicom_header(path)
        if header is None:  # not DICOM
            if path.suffix.lower() == ".mrxs" and (folder / path.stem).is_dir():
                slides.append(SlideFiles(path, path, (path, *_files_under(folder / path.stem)), "mirax"))
            else:
                slides.append(SlideFiles(path, path, (path,), "file"))
        elif header.is_wsi:
            series.setdefault(header.series_uid, []).append((path, header))
        elif header.sop_class in (None, WSI_SOP_CLASS):  # header unreadable or cut short: opening it says why
            slides.append(SlideFiles(path, path, (path,), "dicom"))
        else:  # a well-formed DICOM object that is no slide image (a report, a DICOMDIR, ...)
            log.debug("%s: DICOM object of class %s is not a slide image", path, header.sop_class)
    for members in series.values():
        members.sort(key=_level0_first)
        level0 = members[0][0]
        slides.append(SlideFiles(level0, level0, tuple(sorted(p for p, _ in members)), "dicom"))
    mirax_data = {folder / p.stem for p in files if p.suffix.lower() == ".mrxs"}
    for sub in entries:
        if sub.is_dir() and sub not in mirax_data and _holds_slide_files(sub):
            slides.append(SlideFiles(sub, sub, tuple(_files_under(sub)), "folder"))
    return sorted(slides, key=lambda s: s.path)


def _holds_slide_files(folder: Path) -> bool:
    """Whether a subfolder holds a multi-file slide's files (DICOM, MIRAX or VMS) at its top."""
    try:
        return any(p.is_file() and not _is_sidecar(p) and (p.suffix.lower() in (".mrxs", ".vms") or is_dicom(p))
                   for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return False


def resolve(path: str | Path) -> SlideFiles:
    """The slide that `path` names or belongs to.

    A folder is a slide when it holds exactly one slide (the folder names it; OpenSlide opens that
    slide's file); otherwise SlideError says what it holds. A DICOM file resolves to its series:
    named by its folder when the folder holds that series alone (as `slides_in` of the folder
    above names it), else by the series' level-0 file. Any other file is itself."""
    path = Path(path)
    if path.is_dir():
        try:
            inside = [s for s in slides_in(path) if s.kind != "folder"]
        except OSError as error:
            raise SlideError(f"{path}: cannot be read: {error}") from error
        if len(inside) != 1:
            names = ", ".join(s.path.name for s in inside[:5]) + (", ..." if len(inside) > 5 else "")
            what = f"{len(inside)} slides ({names}); give each slide its own folder" if inside else "no slide files"
            raise SlideError(f"{path}: a slide folder must hold one slide's files, this one holds {what}")
        (only,) = inside
        return SlideFiles(path, only.open_path, tuple(_files_under(path)), only.kind)
    header = dicom_header(path) if path.is_file() else None
    if header is not None and header.is_wsi:
        beside = slides_in(path.parent)
        for slide in beside:
            if slide.kind == "dicom" and path in slide.files:
                if len(beside) == 1:  # the folder is this series alone: named by it, as a scan of its parent names it
                    return SlideFiles(path.parent, slide.open_path, tuple(_files_under(path.parent)), "dicom")
                return slide
    return SlideFiles(path, path, (path,), "file")


def is_slide_folder(path: str | Path) -> bool:
    """Whether `path` is a folder that is one multi-file slide (a DICOM series, a MIRAX or VMS slide,
    and nothing else): such a folder is scored as one slide named by the folder, as it is when its
    parent is scanned, rather than as a folder of slides named by their files. A folder holding one
    one-file slide stays a folder of slides."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        inside = slides_in(path)
    except OSError:
        return False
    return len(inside) == 1 and inside[0].kind in ("dicom", "mirax", "vms")


def openslide_path(path: str | Path) -> Path:
    """The file to hand OpenSlide for the slide at `path` (a folder's slide file; else `path`)."""
    path = Path(path)
    return resolve(path).open_path if path.is_dir() else path
