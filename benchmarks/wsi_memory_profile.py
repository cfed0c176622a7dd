"""Where the whole-slide pass's memory goes (issue 18): the plain pass on a real-size slide with
tracemalloc on, sampling the resident memory every 0.2 s; at the resident peak it prints what
Python (NumPy included) held then, by allocation site, and tracemalloc's own peak. What the
resident memory holds beyond that is native: torch's activations, OpenSlide and libjpeg, and
memory the allocator keeps after NumPy freed it.

    python benchmarks/wsi_memory_profile.py 1/16|1/4|full     (the slide from benchmarks/wsi.py)
"""
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import wsi  # noqa: E402

from ugafl.common.model import ModelConfig  # noqa: E402
from ugafl.common.slide import open_slide  # noqa: E402
from ugafl.common.uncertainty_engine import slide_uncertainty  # noqa: E402


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def main(size: str) -> None:
    cfg, dev = ModelConfig(), torch.device("cpu")
    method = wsi.make_methods(cfg, ["plain"], 8, 5, dev, None)["plain"]
    path = wsi.slide_for(size, Path("runs/wsi-bench"))
    method(torch.rand(2, 3, 544, 544))  # warm-up, as wsi.py
    tracemalloc.start(10)
    best: dict = {"rss": 0.0, "snap": None, "traced": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if (now := rss_mb()) > best["rss"] + 50:  # a new resident peak: what Python holds now
                best.update(rss=now, traced=tracemalloc.get_traced_memory()[0] / 2**20, snap=tracemalloc.take_snapshot())
            time.sleep(0.2)

    start = rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open_slide(path) as slide:
        slide_uncertainty(method, slide, batch_size=16, device=dev, patch_px=512)
    stop.set()
    sampler.join()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(f"{size}: rss before {start:.0f} MB, rss peak {best['rss']:.0f} MB, traced at that moment "
          f"{best['traced']:.0f} MB, traced peak {peak:.0f} MB")
    for stat in best["snap"].statistics("lineno")[:10]:
        print(f"  {stat.size / 2**20:8.1f} MB  {stat.traceback[0]}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in wsi.SIZES:
        print(f"usage: python benchmarks/wsi_memory_profile.py {'|'.join(wsi.SIZES)}", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
