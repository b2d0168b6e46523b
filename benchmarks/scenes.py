"""Which dataparser reads a benchmark scene: the generic options, the named presets, and their checks.

A preset is only a set of defaults for the generic options (``--dataparser``, ``--downscale``, ``--colmap-path``,
``--eval-interval``, ``--background``, ``--ply-path``); a flag given on the command line overrides it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

DATAPARSERS = ("nerfstudio-data", "colmap", "blender-data")
BACKGROUNDS = ("auto", "white", "black", "random")
# nerfstudio's own default for the colmap dataparser (the layout ns-process-data writes)
NERFSTUDIO_COLMAP_PATH = "colmap/sparse/0"


@dataclass(frozen=True)
class SceneOptions:
    """How one scene is parsed (recorded in every run's ``config.scene``)."""

    dataparser: str
    downscale: Optional[int] = None  # None: the dataparser's own choice (largest side at most 1600 px)
    colmap_path: Optional[str] = None  # colmap only; None: nerfstudio's colmap/sparse/0
    eval_interval: int = 8  # every Nth image held out (nerfstudio-data, colmap); blender-data has its test split
    background: str = "auto"  # auto: the method's own default (splatfacto: random)
    ply_path: Optional[str] = None  # blender-data only: seed points (relative to the data folder); None: random init

    def as_dict(self) -> Dict[str, Any]:
        """The options as a JSON object."""
        return asdict(self)


PRESETS: Dict[str, Dict[str, Any]] = {
    "fox": {"dataparser": "nerfstudio-data", "downscale": 2, "eval_interval": 8},
    "lego": {"dataparser": "blender-data", "background": "white"},
    "bonsai": {"dataparser": "colmap", "colmap_path": "sparse/0", "eval_interval": 8, "downscale": 1},
    "demo": {"dataparser": "blender-data", "background": "white", "ply_path": "points3d.ply"},
}


def resolve(scene: str, given: Dict[str, Any]) -> SceneOptions:
    """The scene's options: the preset's defaults (if ``scene`` names one), overridden by the flags given
    (``given`` maps option name to value, None meaning not given). One-line SystemExit on a bad combination."""
    explicit = {k: v for k, v in given.items() if v is not None}
    if scene not in PRESETS and "dataparser" not in explicit:
        raise SystemExit(f"benchmarks: unknown scene {scene!r}: use a preset ({', '.join(PRESETS)}) "
                         f"or give --dataparser {{{','.join(DATAPARSERS)}}}")
    opts = SceneOptions(**{**PRESETS.get(scene, {}), **explicit})
    blender = opts.dataparser == "blender-data"
    wrong = [flag for flag, bad in (("--downscale", blender and opts.downscale is not None),
                                    ("--eval-interval", blender and "eval_interval" in explicit),
                                    ("--colmap-path", opts.dataparser != "colmap" and opts.colmap_path is not None),
                                    ("--ply-path", not blender and opts.ply_path is not None)) if bad]
    if wrong:
        raise SystemExit(f"benchmarks: {', '.join(wrong)} does not apply to --dataparser {opts.dataparser}")
    return opts


def check_data(opts: SceneOptions, data: Path) -> None:
    """One-line SystemExit when ``data`` lacks what the dataparser reads (before any run starts)."""
    if not data.exists():
        raise SystemExit(f"benchmarks: no dataset at {data}")
    if opts.dataparser == "colmap":
        model = data / (opts.colmap_path or NERFSTUDIO_COLMAP_PATH)
        if not any((model / f"cameras.{ext}").exists() for ext in ("bin", "txt")):
            raise SystemExit(f"benchmarks: no COLMAP model (cameras.bin or cameras.txt) in {model}; "
                             "set --colmap-path (e.g. sparse/0)")
        if not (data / "images").is_dir():
            raise SystemExit(f"benchmarks: no images/ folder in {data}")
    need = {"nerfstudio-data": "transforms.json", "blender-data": "transforms_train.json"}.get(opts.dataparser)
    if need and not (data / need).exists():
        raise SystemExit(f"benchmarks: no {need} in {data} (--dataparser {opts.dataparser})")


def dataparser_config(opts: SceneOptions, data: Path):
    """nerfstudio's dataparser config for these options."""
    if opts.dataparser == "nerfstudio-data":
        from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

        return NerfstudioDataParserConfig(data=data, downscale_factor=opts.downscale, eval_mode="interval",
                                          eval_interval=opts.eval_interval)
    if opts.dataparser == "colmap":
        from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

        return ColmapDataParserConfig(data=data, downscale_factor=opts.downscale, eval_mode="interval",
                                      eval_interval=opts.eval_interval,
                                      colmap_path=Path(opts.colmap_path or NERFSTUDIO_COLMAP_PATH))
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    return BlenderDataParserConfig(data=data, ply_path=Path(opts.ply_path) if opts.ply_path else None)
