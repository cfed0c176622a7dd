"""A multi-file DICOM WSI series made from a synthetic slide by wsidicom, a DICOM-writing library
that is not ours (as a PACS export or a scanner's converter would be): one VL Whole Slide
Microscopy Image instance (file) per pyramid level, all sharing one SeriesInstanceUID, tiled JPEG
(TILED_FULL), pixel spacing from the slide's mpp. Made in a temp folder by the tests, not committed.

`write_dicom_series` takes the synthetic TIFF's own pyramid (read with tifffile), so the DICOM
slide shows the same tissue at the same level-0 coordinates and resolution."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import tifffile
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid
from wsidicom import WsiDicom
from wsidicom.codec import Encoder
from wsidicom.geometry import Point, Size, SizeMm
from wsidicom.instance import ImageData, WsiInstance
from wsidicom.metadata import (
    Equipment,
    Image,
    Label,
    Patient,
    Pyramid,
    Series,
    Slide,
    Study,
    WsiMetadata,
)
from wsidicom.metadata.image import ImageType
from wsidicom.metadata.sample import SlideSample
from wsidicom.metadata.schema.dicom import WsiMetadataDicomSchema
from wsidicom.source import Source

TILE = 256


class _LevelImageData(ImageData):
    """One pyramid level held in memory as an RGB array, served as JPEG tiles of TILE px."""

    def __init__(self, pixels: np.ndarray, mpp: float, mpp_y: float):
        self._pixels = pixels
        self._spacing = SizeMm(mpp / 1000, mpp_y / 1000)  # (x, y) in mm; DICOM writes (row, column)
        super().__init__(Encoder.create(JPEGBaseline8Bit, 8, "YBR_FULL_422"))

    transfer_syntax = property(lambda self: JPEGBaseline8Bit)
    image_size = property(lambda self: Size(self._pixels.shape[1], self._pixels.shape[0]))
    tile_size = property(lambda self: Size(TILE, TILE))
    pixel_spacing = property(lambda self: self._spacing)
    imaged_size = property(lambda self: None)
    samples_per_pixel = property(lambda self: 3)
    photometric_interpretation = property(lambda self: "YBR_FULL_422")
    bits = property(lambda self: 8)
    image_coordinate_system = property(lambda self: None)
    thread_safe = property(lambda self: True)
    lossy_compression = property(lambda self: [])
    transcoder = property(lambda self: None)

    def get_decoded_tile(self, tile_point: Point, z: float, path: str, cache: bool = True) -> np.ndarray:
        """The tile at `tile_point`, padded with white to a full TILE x TILE at the edges."""
        x, y = tile_point.x * TILE, tile_point.y * TILE
        tile = np.full((TILE, TILE, 3), 255, np.uint8)
        part = self._pixels[y : y + TILE, x : x + TILE]
        tile[: part.shape[0], : part.shape[1]] = part
        return tile

    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        return self.encoder.encode(self.get_decoded_tile(tile, z, path))


class _PyramidSource(Source):
    """A wsidicom Source over in-memory levels (level 0 first), for WsiDicom(...).save()."""

    def __init__(self, levels: list[np.ndarray], mpp: float, mpp_y: float, metadata: WsiMetadata):
        super().__init__()
        self._levels = [
            WsiInstance.create_instance(_LevelImageData(pixels, mpp * 2**i, mpp_y * 2**i),
                                        WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME, True),
                                        ImageType.VOLUME, i)
            for i, pixels in enumerate(levels)
        ]

    base_dataset = property(lambda self: self._levels[0].dataset)
    level_instances = property(lambda self: self._levels)
    label_instances = property(lambda self: [])
    overview_instances = property(lambda self: [])
    thumbnail_instances = property(lambda self: [])
    annotation_instances = property(lambda self: [])

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class DicomSeries:
    folder: Path
    files: list[Path]  # one per level, sorted
    series_uid: str
    mpp: float
    width: int
    height: int


def write_dicom_series(levels: list[np.ndarray], mpp: float, folder: Path, *, mpp_y: float | None = None,
                       suffix: str = ".dcm", prefix: str = "level", series_uid: str | None = None) -> DicomSeries:
    """Write `levels` (RGB uint8 arrays, level 0 first, each half the one before) as one DICOM WSI
    series in `folder` (created; may hold other files): one file per level, named
    <prefix><level><suffix>. Pixel spacing `mpp` (x) and `mpp_y` (y, default `mpp`) at level 0."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dicom-", dir=folder))
    series_uid = series_uid or generate_uid()
    metadata = WsiMetadata(
        study=Study(uid=UID(generate_uid()), identifier="S1"),
        series=Series(uid=UID(series_uid), number=1),
        patient=Patient(name="Synthetic^Slide", identifier="P1"),
        equipment=Equipment(manufacturer="ugafl tests", model_name="synthetic", device_serial_number="0",
                            software_versions=["1"]),
        slide=Slide(identifier="SLIDE_1", samples=[SlideSample(identifier="SAMPLE_1", uid=UID(generate_uid()))]),
        pyramid=Pyramid(image=Image(pixel_spacing=SizeMm(mpp / 1000, (mpp_y or mpp) / 1000)), optical_paths=[],
                        uid=UID(generate_uid())),
        label=Label(),
        frame_of_reference_uid=UID(generate_uid()),
        dimension_organization_uids=[UID(generate_uid())],
    )
    with WsiDicom(_PyramidSource(levels, mpp, mpp_y or mpp, metadata)) as wsi:
        written = [Path(str(p)) for p in wsi.save(staging, workers=1, include_labels=False, include_overviews=False,
                                                   include_thumbnails=False)]
    # wsidicom names files by their instance UID: name them by level (largest first) instead
    written.sort(key=lambda p: -int(pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns))
    files = []
    for i, path in enumerate(written):
        files.append(path.rename(folder / f"{prefix}{i}{suffix}"))
    shutil.rmtree(staging)
    return DicomSeries(folder, files, str(series_uid), mpp, levels[0].shape[1], levels[0].shape[0])


def tiff_levels(path: Path) -> list[np.ndarray]:
    """The pyramid levels of a synthetic generic TIFF (conftest.write_synthetic_tiff), level 0 first."""
    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]

