"""Up-front checks shared by ``ns-train`` (our methods), ``argp-ns prune`` and nerfstudio's loaders.

Each check raises :class:`ConfigError` with one line naming the real cause (a bad flag, a missing
path, an unreadable checkpoint, a folder that cannot be written); the commands print that line and
stop before they write anything. Nothing here loads a model or renders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from argp_ns import compat, gsplat_compat

CHECKPOINT = re.compile(r"^step-(\d+)\.ckpt$")


class ConfigError(ValueError):
    """A bad input found before any work: its message is the one line the user sees."""


def check_device(device_type: str) -> None:
    """A CUDA run needs a CUDA GPU, an MPS run Apple's MPS; say what to use instead of torch's driver traceback."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU found (torch.cuda.is_available() is False); add --machine.device-type cpu "
                          "to train on the CPU (slow: tiny scenes only, e.g. `argp-ns demo`)")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("no Apple MPS device on this machine (torch.backends.mps.is_available() is False); use "
                          "--machine.device-type cuda or cpu")


def check_data(data: Optional[Path]) -> None:
    """The data path (a folder or a transforms file) must exist."""
    if data is None or not Path(data).exists():
        raise ConfigError(f"the data path {data} does not exist")


def check_model(model_config, max_steps: int, device_type: Optional[str] = None) -> None:
    """Our model flags, by their options' own validation (:mod:`argp_ns.options`, run by the strategy the config
    builds, against the run's ``max_steps``) and the score backend against ``device_type`` (default: cuda where there
    is a GPU); the gsplat and nerfstudio versions. Other models pass."""
    from argp_ns.model import LeanModelConfig
    from argp_ns.options import BackendOption

    if not isinstance(model_config, LeanModelConfig):
        return
    problem = gsplat_compat.version_problem() or compat.version_problem()
    if problem:
        raise ConfigError(problem)
    device = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if not getattr(model_config, "scored_prune", True) and getattr(model_config, "budget", 0):
        raise ConfigError("budget needs the scored prune: drop --pipeline.model.scored-prune False or the budget")
    try:
        model_config.build_strategy(num_train_data=1).check_config(max_steps)
        if isinstance(model_config, BackendOption):
            model_config.validate_backend(device, getattr(model_config, "top_k", 1))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_writable(output_dir: Path) -> None:
    """``output_dir`` (which need not exist yet) can be created or, if it exists, written in: its nearest existing
    path is a folder in which a folder can be made and removed again (the folder's times are put back after)."""
    target = Path(output_dir).absolute()
    parent = compat.existing_ancestor(target)
    what = f"{output_dir}" if parent == target else f"cannot create {output_dir}: {parent}"
    if not parent.is_dir():
        raise ConfigError(f"{what} is a file, not a folder")
    times = os.stat(parent)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".argp-ns-write-test-", dir=parent))
    except OSError as err:
        raise ConfigError(f"{what} is not writable ({err.strerror})") from None
    try:
        os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError:
        pass  # a folder writable but not ours keeps the new times


def check_eval_output(output_path: Path, render_output_path: Optional[Path] = None) -> None:
    """``ns-eval``'s outputs: ``--output-path`` is a ``.json`` file that can be written (its folder can be made or
    written in, it is not a folder), ``--render-output-path`` (if given) a folder that can be made or written in."""
    path = Path(output_path)
    if path.suffix != ".json":
        raise ConfigError(f"ns-eval --output-path {output_path} must end in .json (the metrics are written as JSON)")
    if path.is_dir():
        raise ConfigError(f"ns-eval --output-path {output_path} is a folder; give a .json file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"ns-eval --output-path {output_path} is not writable; choose another --output-path")
    try:
        check_writable(path.parent)
    except ConfigError as err:
        raise ConfigError(f"ns-eval --output-path {output_path}: {err}; choose another --output-path") from None
    if render_output_path is not None:
        try:
            check_writable(render_output_path)
        except ConfigError as err:
            raise ConfigError(f"ns-eval --render-output-path: {err}; choose another --render-output-path") from None


def check_run_data(datamanager_config, config_path: Optional[Path]) -> None:
    """A finished run loaded by ``ns-eval`` / ``ns-export``: the dataset it was trained on (``data``, else the
    dataparser's) is still where its config.yml says; if not, one line saying where and how to point elsewhere."""
    data = datamanager_config.data or getattr(datamanager_config.dataparser, "data", None)
    if data is not None and not Path(data).exists():
        where = f" in {config_path}" if config_path else ""
        raise ConfigError(f"the run's dataset {data} is not there (moved or deleted?): put it back, or write its new "
                          f"place as the dataparser's data:{where}")


def check_export_dir(output_dir: Path, output_filename: Optional[str] = None) -> None:
    """``ns-export``'s ``--output-dir``: a folder that can be made or written in (not a file); and the file it will
    write there (``output_filename``, gaussian-splat's ``splat.ply``), if it exists, a file that can be written."""
    try:
        check_writable(output_dir)
    except ConfigError as err:
        raise ConfigError(f"ns-export --output-dir: {err}; choose another --output-dir") from None
    if not output_filename:
        return
    target = Path(output_dir) / output_filename
    if target.is_dir():
        raise ConfigError(f"ns-export: {target} is a folder; remove it or choose another --output-dir")
    if target.exists() and not writable_file(target):
        raise ConfigError(f"ns-export: {target} exists and cannot be overwritten; choose another --output-dir")


def writable_file(path: Path) -> bool:
    """An existing file can be opened for writing (this also sees the immutable flag and read-only mounts, which
    ``os.access`` does not); the file is left as it was."""
    try:
        with open(path, "r+b"):
            return True
    except OSError:
        return False


def checkpoint_readable(path: Path) -> bool:
    """True when ``path`` is an intact torch checkpoint: a zip archive whose every member passes its CRC
    (a save killed midway leaves a file without the archive's directory, which this catches)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def checkpoints(load_dir: Path) -> List[Tuple[int, Path]]:
    """The ``step-N.ckpt`` files of a checkpoint folder as (step, path), newest first."""
    found = [(int(m.group(1)), load_dir / name) for name in os.listdir(load_dir) if (m := CHECKPOINT.match(name))]
    return sorted(found, reverse=True)


def unreadable(path: Path) -> str:
    """The one line for a checkpoint that cannot be read."""
    return f"checkpoint {path} is unreadable (corrupt or truncated)"


def resolve_checkpoint(load_dir: Path, load_step: Optional[int], fall_back: bool) -> Tuple[int, Path, List[Path]]:
    """The checkpoint to load from ``load_dir`` (``load_step``'s, else the newest) as (step, path, skipped).

    With ``fall_back``, unreadable newer checkpoints are skipped for the newest intact one and returned in
    ``skipped``; without it, an unreadable one is an error. A missing folder, a folder without checkpoints, a
    missing ``load_step`` or no intact checkpoint raise :class:`ConfigError`."""
    if not Path(load_dir).is_dir():
        raise ConfigError(f"checkpoint folder {load_dir} does not exist")
    found = checkpoints(Path(load_dir))
    if not found:
        raise ConfigError(f"no checkpoint (step-*.ckpt) in {load_dir}")
    if load_step is not None:
        found = [(s, p) for s, p in found if s == load_step]
        if not found:
            raise ConfigError(f"no checkpoint for step {load_step} in {load_dir}")
    fall_back = fall_back and load_step is None  # a step asked for by name is never swapped for another
    skipped: List[Path] = []
    for step, path in found:
        if checkpoint_readable(path):
            return step, path, skipped
        if not fall_back:
            raise ConfigError(unreadable(path))
        skipped.append(path)
    raise ConfigError(f"no intact checkpoint in {load_dir}; unreadable (corrupt or truncated): " + ", ".join(p.name for p in skipped))


def _parse_error(parser: str, data: Path, err: BaseException) -> str:
    """One line for a dataset nerfstudio's dataparser could not read: the file when the error names one."""
    name = getattr(err, "filename", None)
    if isinstance(err, json.JSONDecodeError):
        return f"the {parser} transforms file under {data} is not valid JSON ({err.msg}, line {err.lineno})"
    if isinstance(err, UnicodeDecodeError):
        return f"a file of the dataset {data} is not UTF-8 text ({err.reason}); the transforms file must be UTF-8 JSON"
    if isinstance(err, KeyError):
        return f"the dataset {data} lacks the field {err.args[0]!r} that nerfstudio's {parser} dataparser needs"
    if name:
        return f"{getattr(err, 'strerror', None) or type(err).__name__}: {name}"
    where = _file_in_traceback(err, data) or data
    return f"nerfstudio's {parser} dataparser cannot read {where}: {type(err).__name__}: {err}".rstrip(": ")


def _file_in_traceback(err: BaseException, data: Path) -> Optional[Path]:
    """The file of the dataset that the innermost frame of ``err``'s traceback was reading (a local variable of that
    frame naming an existing file under ``data``), for errors that do not name it (e.g. PIL's "image file is
    truncated" when the dataparser reads its first image)."""
    root = (Path(data) if Path(data).is_dir() else Path(data).parent).resolve()
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, (str, Path)) and len(str(value)) < 4096:
                try:
                    path = Path(value).resolve()
                    if path.is_file() and root in path.parents:
                        return path
                except (OSError, ValueError):
                    continue
    return None


def jpeg_complete(path: Path, tail: int = 4096) -> bool:
    """The JPEG file ends with its end-of-image marker FF D9 within its last ``tail`` bytes (PIL's ``verify`` does
    not read a JPEG's scan data; in that data an FF byte is always followed by 00, so FF D9 there is the marker)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - tail))
        return b"\xff\xd9" in f.read()


def check_dataset(dataparser_config, data: Optional[Path]) -> None:
    """The dataset as the run will read it, before any folder is made: nerfstudio's own dataparser parses it (the
    transforms or COLMAP model, the seed points file, for the train, val and test splits), then each image's header
    is read and its size compared with its camera's, and the file checked for truncation without decoding its
    pixels (PNG: PIL's ``verify``; JPEG: :func:`jpeg_complete`)."""
    from PIL import Image, UnidentifiedImageError

    check_data(data)
    parser = type(dataparser_config).__name__.replace("DataParserConfig", "").lower() or "its"
    config = dataclasses.replace(dataparser_config, data=Path(data))  # the datamanager's --data, as nerfstudio sets it
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    for transforms in [Path(data)] if Path(data).suffix == ".json" else [root / "transforms.json", *sorted(root.glob("transforms_*.json"))]:
        try:
            frames = json.loads(transforms.read_text(encoding="utf-8")).get("frames")
        except UnicodeDecodeError as err:
            raise ConfigError(f"the transforms file {transforms} is not UTF-8 text ({err.reason})") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"the transforms file {transforms} is not valid JSON ({err.msg}, line {err.lineno})") from None
        except (OSError, AttributeError):
            continue  # absent, or not a JSON object: the dataparser's own reading below names the fault
        if frames == []:
            raise ConfigError(f"the transforms file {transforms} lists no frames")
    outputs = {}
    for split in ("train", "val", "test"):  # training evaluates on "val" (blender: transforms_val.json), ns-eval on "test"
        try:
            outputs[split] = config.setup().get_dataparser_outputs(split=split)
        except (OSError, ValueError, KeyError, AssertionError, IndexError, TypeError, UnicodeDecodeError) as err:
            raise ConfigError(_parse_error(parser, Path(data), err)) from None
    ply = getattr(config, "ply_path", None)
    if ply is not None and not (root / ply).is_file():
        relative = "" if Path(ply).is_absolute() else " (--ply-path is relative to --data)"
        raise ConfigError(f"the seed points file {root / ply} does not exist{relative}")
    points = outputs["train"].metadata.get("points3D_xyz")
    if ply is not None and points is not None and len(points) == 0:
        raise ConfigError(f"the seed points file {root / ply} holds no points")
    if not outputs["train"].image_filenames:
        raise ConfigError(f"the dataset {data} has no training images (its transforms or COLMAP model lists no frames)")
    seen = set()
    for split, out in outputs.items():
        widths, heights = out.cameras.width.flatten().tolist(), out.cameras.height.flatten().tolist()
        for path, w, h in zip(out.image_filenames, widths, heights):
            if path in seen:
                continue
            seen.add(path)
            try:
                with Image.open(path) as img:
                    size, kind = img.size, img.format
                    img.verify()  # PNG: every chunk and its CRC, without decoding the pixels
            except FileNotFoundError:
                raise ConfigError(f"image {path} is missing (the dataset lists it)") from None
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                raise ConfigError(f"image {path} cannot be decoded ({err or type(err).__name__})") from None
            if kind == "JPEG" and not jpeg_complete(Path(path)):
                raise ConfigError(f"image {path} is truncated (no JPEG end marker)")
            if tuple(size) != (int(w), int(h)):
                raise ConfigError(f"image {path} is {size[0]}x{size[1]} but its camera says {int(w)}x{int(h)}")
