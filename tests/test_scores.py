"""The score pass's PyTorch twin against brute-force per-pixel enumeration and autograd."""

import math

import pytest
import torch
from conftest import random_scene

from argp_ns import twin
from argp_ns.scores import ScoreSpec, accumulate_tiles, empty_totals, family_score
from argp_ns.scoring import View, score_views
from argp_ns.strategy import SafeguardStrategy, quantile

CODES = (3, 4, 8, 9, 36, 39, 40, 52, 57, 0x10)


def scene_with_ties(seed=0):
    means, quats, scales, opac, sh, vm, K, W, H = random_scene(36, seed)
    dup = torch.arange(0, 36, 6)  # exact duplicates: equal depth and score, the lower index is in front
    cat = lambda x: torch.cat([x, x[dup]])  # noqa: E731
    return cat(means), cat(quats), cat(scales), cat(opac), cat(sh), vm, K, W, H


def views_for(vm, K, W, H, seed):
    g = torch.Generator().manual_seed(seed)
    return [View(vm[c], K[c], W, H, torch.rand(H, W, 3, generator=g), torch.rand(3, generator=g)) for c in range(vm.shape[0])]


def enumerate_pixels(means, quats, scales, opac, sh, view, sh_degree=1):
    """Brute force: per pixel, its contributors front to back as (gaussian, alpha, vis, T), float32 walk."""
    proj = twin.project(means, quats, scales, opac, view.viewmat[None], view.K[None], view.width, view.height)
    cols = twin.view_colors(means, sh, view.viewmat[None], proj["radii"], sh_degree)[0]
    tw, th = math.ceil(view.width / 16), math.ceil(view.height / 16)
    lo, hi = twin.tile_bounds(proj["means2d"], proj["radii"], 16, tw, th)
    depth = proj["depths"][0]
    order = sorted(range(means.shape[0]), key=lambda i: (depth[i].item(), i))
    pixels = {}
    for y in range(view.height):
        for x in range(view.width):
            T, lst = torch.tensor(1.0), []
            for i in order:
                if not (lo[0, i, 0] <= x // 16 < hi[0, i, 0] and lo[0, i, 1] <= y // 16 < hi[0, i, 1]):
                    continue
                xy = torch.tensor([[x, y]])
                a, vis, ok = twin.gaussian_alpha(proj["means2d"][0, i][None], proj["conics"][0, i][None], proj["opacities"][0, i][None], xy)
                a, vis = a.reshape(()), vis.reshape(())
                if not ok.item() or a.item() < 1 / 255:
                    continue
                if (T * (1 - a)).item() <= 1e-4:
                    break
                lst.append((i, a, vis, T.clone()))
                T = T * (1 - a)
            pixels[(x, y)] = lst
    return pixels, proj, cols


@pytest.fixture(scope="module")
def brute():
    means, quats, scales, opac, sh, vm, K, W, H = scene_with_ties()
    views = views_for(vm, K, W, H, 0)
    per_view = [enumerate_pixels(means, quats, scales, opac, sh, v) for v in views]
    return (means, quats, scales, opac, sh), views, per_view


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("k", [1, 3, 50])
def test_topk_kept_set_exact(brute, code, k):
    params, views, per_view = brute
    spec = ScoreSpec.from_code(code)
    expected = set()
    for view, (pixels, proj, cols) in zip(views, per_view):
        for (x, y), lst in pixels.items():
            if not lst:
                continue
            ids = [i for i, *_ in lst]
            a = torch.stack([t[1] for t in lst]); T = torch.stack([t[3] for t in lst])
            dist = (proj["means2d"][0, ids] - torch.tensor([x + 0.5, y + 0.5])).norm(dim=-1)
            s = family_score(spec, proj["opacities"][0, ids], a, T, dist, cols[ids], view.image[y, x][None])
            ranked = sorted(range(len(ids)), key=lambda j: (-s[j].item(), j))
            expected |= {ids[j] for j in ranked[:k]}
    res = score_views(*params, 1, views, spec, k=k, backend="torch")
    assert set(torch.nonzero(res.totals["keep"])[:, 0].tolist()) == expected


def test_safeguard_property_and_scene_sums(brute):
    params, views, per_view = brute
    res = score_views(*params, 1, views, ScoreSpec.parse("safeguard"), k=1, backend="torch")
    keep = res.totals["keep"]
    n = params[0].shape[0]
    sum_w, max_w, hits, sum_o = torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.long), torch.zeros(n)
    for pixels, proj, _ in per_view:
        for lst in pixels.values():
            if lst:
                assert any(keep[i] for i, *_ in lst)  # every covered pixel keeps a contributor
            for i, a, _, T in lst:
                sum_w[i] += a * T; max_w[i] = max(max_w[i], a * T); hits[i] += 1; sum_o[i] += proj["opacities"][0, i]
    assert torch.equal(res.totals["hits"], hits)
    for key, ref in (("sum_w", sum_w), ("max_w", max_w), ("sum_opacity", sum_o)):
        assert torch.allclose(res.totals[key].float(), ref, rtol=1e-5, atol=1e-6), key
    covered = [sum(1 for l in p.values() if l) / (v.width * v.height) for (p, _, _), v in zip(per_view, views)]
    assert res.coverage == pytest.approx(covered)


def test_recovery_score_equals_autograd():
    means, quats, scales, opac, sh, vm, K, W, H = random_scene(50, 5)
    for view in views_for(vm, K, W, H, 1):
        proj = twin.project(means, quats, scales, opac, view.viewmat[None], view.K[None], W, H)
        cols = twin.view_colors(means, sh, view.viewmat[None], proj["radii"], 1)[0]
        m2, con, op = proj["means2d"][0], proj["conics"][0], proj["opacities"][0]
        tw, th = math.ceil(W / 16), math.ceil(H / 16)
        lo, hi = twin.tile_bounds(proj["means2d"], proj["radii"], 16, tw, th)
        totals = empty_totals(50, torch.device("cpu"))
        ref = torch.zeros(50, dtype=torch.float64)
        for _, ids, xy, inside in twin.iter_tile_chunks(lo[0], hi[0], proj["depths"][0], W, H, 16):
            gt = view.image[xy[..., 1].clamp(max=H - 1), xy[..., 0].clamp(max=W - 1)]
            accumulate_tiles(totals, ids, xy, inside, gt, view.background, m2, con, op, cols, ScoreSpec(), 1, recovery=True)
            g = ids.clamp(min=0)[:, None, :]
            alpha, vis, ok = twin.gaussian_alpha(m2[g], con[g], op[g], xy)
            valid = (ids >= 0)[:, None, :] & inside[..., None] & ok & (alpha >= 1 / 255)
            contrib, _ = twin.stop_walk(alpha, valid)
            leaf = alpha.double().detach().requires_grad_(True)  # per-intersection alphas as leaves
            a = torch.where(contrib, leaf, torch.zeros_like(leaf))
            T, T_final = twin.exclusive_transmittance(a)
            C = ((a * T)[..., None] * cols[g].double()).sum(-2) + T_final[..., None] * view.background.double()
            C.clamp(0, 1).where(inside[..., None], torch.zeros_like(C)).sum().backward()
            s = vis.double() * leaf.grad**2
            ref.index_add_(0, g.expand_as(contrib)[contrib], s[contrib])
        assert ref.abs().sum() > 0
        assert torch.allclose(totals["recovery"].double(), ref, rtol=1e-5, atol=1e-7 * ref.abs().max().item())


def test_score_spec_aliases():
    assert ScoreSpec.parse("safeguard") == ScoreSpec("alpha_t", "none", "l1") and ScoreSpec.parse("0x24").code == 36
    assert ScoreSpec.parse("efficientgs").code == 4 and ScoreSpec.parse("alpha_t*exp*exp_l1").code == 57
    for code in CODES:
        assert ScoreSpec.from_code(code).code == code
    with pytest.raises(ValueError):
        ScoreSpec.parse("alpha_t*l2")


def test_baseline_masks_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    n = 1000
    params = {"scales": torch.randn(n, 3, generator=g) * 0.3 - 3}
    scores = {"sum_w": torch.rand(n, generator=g), "max_w": torch.rand(n, generator=g), "sum_opacity": torch.rand(n, generator=g) * 10,
              "keep": torch.rand(n, generator=g) > 0.5, "keep_tile": torch.rand(n, generator=g) > 0.8}
    vol = params["scales"].exp().prod(-1)
    sig = scores["sum_opacity"] * (vol / torch.quantile(vol, 0.9)) ** 0.1
    lg = SafeguardStrategy(prune_method="lightgaussian", prune_ratio=0.6).prune_mask(params, scores)
    assert lg.sum() == 600 and sig[lg].max() <= sig[~lg].min()
    ms = SafeguardStrategy(prune_method="minisplatting", keep_ratio=0.1).prune_mask(params, scores)
    assert (~ms).sum() == 100 and scores["sum_w"][~ms].min() >= scores["sum_w"][ms].max()
    msr = SafeguardStrategy(prune_method="minisplatting", keep_ratio=0.1, minisplatting_sampling=True).prune_mask(params, scores)
    assert (~msr).sum() == 100
    rs = SafeguardStrategy(prune_method="radsplat", radsplat_threshold=0.25).prune_mask(params, scores)
    assert torch.equal(rs, scores["max_w"] < 0.25)
    assert torch.equal(SafeguardStrategy().prune_mask(params, scores), ~scores["keep"])
    assert torch.equal(SafeguardStrategy(topk_scope="tile").prune_mask(params, scores), ~scores["keep_tile"])
    assert torch.isclose(quantile(vol, 0.9), torch.quantile(vol, 0.9))
