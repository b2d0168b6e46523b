"""The embedded demo scene: a small synthetic Blender-layout dataset the project draws itself.

Three textured spheres and a checkered box, ray traced analytically (no third-party data), seen by
cameras on a sphere around the origin. Written as ``transforms_{train,val,test}.json`` + RGBA PNGs
(transparent background, so nerfstudio's ``blender-data`` parser composites it on its background),
plus ``points3d.ply``: coloured points sampled on the surfaces, the "SfM" seed splatfacto starts from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from plyfile import PlyData, PlyElement


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    stripes: int


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    checks: float


SPHERES = (
    Sphere((0.0, 0.0, 0.15), 0.45, (0.85, 0.15, 0.1), (0.95, 0.8, 0.2), 6),
    Sphere((0.6, -0.45, -0.1), 0.25, (0.1, 0.3, 0.9), (0.9, 0.9, 0.95), 4),
    Sphere((-0.55, 0.5, -0.15), 0.22, (0.1, 0.7, 0.3), (0.05, 0.2, 0.1), 5),
)
BOX = Box((-0.9, -0.9, -0.45), (0.9, 0.9, -0.3), (0.9, 0.9, 0.9), (0.25, 0.25, 0.3), 0.3)
LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])


def _sphere_albedo(s: Sphere, p: np.ndarray) -> np.ndarray:
    """Latitude stripes x longitude bands: alternates colour_a / colour_b."""
    d = (p - np.array(s.center)) / s.radius
    lat = np.arcsin(np.clip(d[..., 2], -1, 1))
    lon = np.arctan2(d[..., 1], d[..., 0])
    pick = (np.floor(lat / math.pi * s.stripes) + np.floor(lon / math.pi * s.stripes)) % 2
    return np.where(pick[..., None] > 0, np.array(s.color_a), np.array(s.color_b))


def _box_albedo(b: Box, p: np.ndarray) -> np.ndarray:
    """3-D checkerboard of cell size ``checks``."""
    pick = np.floor(p / b.checks).sum(-1) % 2
    return np.where(pick[..., None] > 0, np.array(b.color_a), np.array(b.color_b))


def _hit_sphere(s: Sphere, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Nearest positive ray parameter t of |o + t d - c| = r, +inf where missed (d normalised)."""
    oc = o - np.array(s.center)
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - s.radius**2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc > 0) & (t > 1e-6), t, np.inf)


def _hit_box(b: Box, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test: entry t (inf where missed) and the outward normal there."""
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t0 = (np.array(b.lo) - o) * inv
    t1 = (np.array(b.hi) - o) * inv
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    t_enter, t_exit = tmin.max(-1), tmax.min(-1)
    axis = tmin.argmax(-1)
    normal = np.zeros_like(d)
    np.put_along_axis(normal, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
    hit = (t_enter < t_exit) & (t_enter > 1e-6)
    return np.where(hit, t_enter, np.inf), normal


def trace(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """RGBA of rays (o, d): Lambert + ambient shading of the nearest surface, alpha 0 where none."""
    best_t = np.full(d.shape[:-1], np.inf)
    rgb = np.zeros(d.shape[:-1] + (3,))
    for s in SPHERES:
        t = _hit_sphere(s, o, d)
        p = o + t[..., None] * d
        n = (p - np.array(s.center)) / s.radius
        shade = 0.35 + 0.65 * np.clip((n * LIGHT).sum(-1), 0, 1)
        closer = t < best_t
        rgb = np.where(closer[..., None], _sphere_albedo(s, np.where(closer[..., None], p, 0)) * shade[..., None], rgb)
        best_t = np.where(closer, t, best_t)
    t, n = _hit_box(BOX, o, d)
    p = o + np.where(np.isfinite(t), t, 0)[..., None] * d
    shade = 0.35 + 0.65 * np.clip((n * LIGHT).sum(-1), 0, 1)
    closer = t < best_t
    rgb = np.where(closer[..., None], _box_albedo(BOX, p) * shade[..., None], rgb)
    best_t = np.where(closer, t, best_t)
    alpha = np.isfinite(best_t).astype(np.float64)
    return np.concatenate([rgb * alpha[..., None], alpha[..., None]], -1)


def look_at(eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Camera-to-world 4x4 in the Blender/OpenGL convention (camera looks down -z, y up)."""
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, back, eye
    return c2w


def render_view(c2w: np.ndarray, size: int, fov_x: float, supersample: int = 2) -> np.ndarray:
    """RGBA float image [size, size, 4] of the scene, box-filtered over supersample^2 rays per pixel."""
    n = size * supersample
    focal = 0.5 * n / math.tan(0.5 * fov_x)
    ij = (np.arange(n) + 0.5 - 0.5 * n) / focal
    x, y = np.meshgrid(ij, -ij)
    dirs_cam = np.stack([x, y, -np.ones_like(x)], -1)
    d = dirs_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape)
    img = trace(o, d)
    return img.reshape(size, supersample, size, supersample, 4).mean((1, 3))


def sphere_cameras(n: int, radius: float, seed: int) -> list[np.ndarray]:
    """n camera poses on the upper part of a sphere (Fibonacci spiral, jittered), looking at the origin."""
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(n):
        z = 0.15 + 0.75 * (i + 0.5) / n
        phi = i * math.pi * (3 - math.sqrt(5)) + rng.uniform(-0.1, 0.1)
        r_xy = math.sqrt(1 - z * z)
        poses.append(look_at(radius * np.array([r_xy * math.cos(phi), r_xy * math.sin(phi), z])))
    return poses


def surface_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n coloured points on the visible surfaces (the seed point cloud), jittered off the surface a little."""
    rng = np.random.default_rng(seed)
    pts, cols = [], []
    per = n // (len(SPHERES) + 1)
    for s in SPHERES:
        u = rng.normal(size=(per, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        p = np.array(s.center) + s.radius * u
        pts.append(p)
        cols.append(_sphere_albedo(s, p))
    lo, hi = np.array(BOX.lo), np.array(BOX.hi)
    p = rng.uniform(lo, hi, size=(n - per * len(SPHERES), 3))
    p[:, 2] = hi[2]
    pts.append(p)
    cols.append(_box_albedo(BOX, p))
    points = np.concatenate(pts) + rng.normal(scale=0.01, size=(n, 3))
    return points, np.concatenate(cols)


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary PLY with float x,y,z and uchar red,green,blue, the layout nerfstudio's parsers read."""
    rec = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = points.T
    rgb = np.clip(colors * 255 + 0.5, 0, 255).astype(np.uint8)
    rec["red"], rec["green"], rec["blue"] = rgb.T
    PlyData([PlyElement.describe(rec, "vertex")]).write(str(path))


def make_demo_scene(
    out_dir: Path, size: int = 64, n_train: int = 24, n_test: int = 8, n_points: int = 2000, seed: int = 0
) -> Path:
    """Write the demo scene to out_dir (created) and return it. Deterministic for a given seed."""
    out_dir = Path(out_dir)
    fov_x = math.radians(40.0)
    poses = sphere_cameras(n_train + n_test, radius=3.2, seed=seed)
    test_ids = set(range(0, n_train + n_test, (n_train + n_test) // n_test))
    splits = {"train": [p for i, p in enumerate(poses) if i not in test_ids], "test": [p for i, p in enumerate(poses) if i in test_ids]}
    for split, split_poses in splits.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, c2w in enumerate(split_poses):
            rgba = render_view(c2w, size, fov_x)
            Image.fromarray(np.clip(rgba * 255 + 0.5, 0, 255).astype(np.uint8), "RGBA").save(out_dir / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        meta = json.dumps({"camera_angle_x": fov_x, "frames": frames}, indent=1)
        (out_dir / f"transforms_{split}.json").write_text(meta)
        if split == "test":
            (out_dir / "transforms_val.json").write_text(meta)
    write_ply(out_dir / "points3d.ply", *surface_points(n_points, seed))
    return out_dir
