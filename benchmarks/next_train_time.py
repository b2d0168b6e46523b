"""Host time of one ``next_train`` call: nerfstudio's ``FullImageDatamanager`` against the lean step's.

    python -m benchmarks.next_train_time [--calls 5000] [--device cpu]

Both datamanagers read the same small scene (the demo scene, generated in a temporary folder) and hand out
``--calls`` training views after 100 of warm-up; prints the mean microseconds per call of each, twice, alternating.
Pure Python and tiny tensors: the figure is the host's overhead, which a GPU step pays on top of its kernels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import torch


def time_next_train(config_cls, scene: Path, device: str, calls: int) -> float:
    """Mean microseconds per ``next_train`` of a datamanager of ``config_cls`` on ``scene``."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    dm = config_cls(dataparser=BlenderDataParserConfig(data=scene),
                    cache_images_type="uint8").setup(device=device)
    for step in range(100):
        dm.next_train(step)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(calls):
        dm.next_train(step)
    if device == "cuda":
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / calls


def main(argv: Optional[List[str]] = None) -> None:
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig

    from argp_ns.datamanager import LeanDatamanagerConfig
    from argp_ns.demo_scene import make_demo_scene

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_demo_scene(Path(tmp) / "scene", size=16, n_train=8, n_test=2, n_points=50)
        for _ in range(2):
            for name, cls in (("nerfstudio FullImageDatamanager", FullImageDatamanagerConfig), ("argp_ns LeanDatamanager", LeanDatamanagerConfig)):
                print(f"next_train_time: {name}: {time_next_train(cls, scene, args.device, args.calls):.1f} us per call ({args.device})")


if __name__ == "__main__":
    main()
