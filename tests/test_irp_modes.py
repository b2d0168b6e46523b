"""IRP candidate modes on a real SplatfactoArgpModel (CPU twin): moments, frozen, hidden."""

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.scene_box import SceneBox

from argp_ns.model import SplatfactoArgpModelConfig
from argp_ns.render import viewmat_from_c2w
from argp_ns.scores import ScoreSpec
from argp_ns.scoring import View, score_views
from argp_ns.strategy import zero_moments


def make_model(mode: str):
    torch.manual_seed(0)
    cfg = SplatfactoArgpModelConfig(num_random=300, random_scale=1.0, irp_mode=mode, stop_split_at=100, irp_start=100,
                                    irp_every=50, irp_last=200, background_color="black")
    model = cfg.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4, metadata={})
    model.gauss_params["opacities"].data.fill_(2.0)
    model.optimizers = {k: torch.optim.Adam([p], lr=0.01) for k, p in model.gauss_params.items()}
    model.step = 1000  # full resolution, SH degree 1
    cand = torch.zeros(300, dtype=torch.bool)
    cand[::3] = True
    model.strategy_state["irp_candidates"] = cand
    zero_moments(model.optimizers, model.gauss_params.keys(), cand)
    return model, cand


def camera():
    c2w = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.5]]])
    return Cameras(camera_to_worlds=c2w, fx=30.0, fy=30.0, cx=16.0, cy=16.0, width=32, height=32)


def train_step(model):
    out = model.get_outputs(camera())
    out["rgb"].sum().backward()
    for opt in model.optimizers.values():
        opt.step()
        opt.zero_grad()
    return out


def test_frozen_rows_get_no_update():
    model, cand = make_model("frozen")
    model.train()
    before = {k: v.detach().clone() for k, v in model.gauss_params.items()}
    train_step(model)
    train_step(model)
    for k, v in model.gauss_params.items():
        assert torch.equal(v[cand], before[k][cand]), k
    assert not torch.equal(model.gauss_params["means"][~cand], before["means"][~cand])


def test_hidden_rows_absent_from_training_renders_present_in_scoring():
    model, cand = make_model("hidden")
    model.train()
    hidden = model.get_outputs(camera())["rgb"].detach()  # a training render (gradients on, as in training)
    full = {k: v.detach().clone() for k, v in model.gauss_params.items()}
    for k, v in model.gauss_params.items():
        v.data = full[k][~cand]
    model.strategy_state["irp_candidates"] = torch.zeros(int((~cand).sum()), dtype=torch.bool)
    without = model.get_outputs(camera())["rgb"].detach()
    assert hidden.sum() > 1.0 and torch.allclose(hidden, without, atol=1e-6)
    for k, v in model.gauss_params.items():
        v.data = full[k]
    cam = camera()
    view = View(viewmat_from_c2w(cam.camera_to_worlds)[0], cam.get_intrinsics_matrices()[0], 32, 32, torch.rand(32, 32, 3), torch.zeros(3))
    coeffs = torch.cat((model.features_dc[:, None], model.features_rest), 1).detach()
    res = score_views(model.means.detach(), model.quats.detach(), torch.exp(model.scales.detach()),
                      torch.sigmoid(model.opacities.detach()).squeeze(-1), coeffs, 1, [view], ScoreSpec(), recovery=True)
    assert res.totals["hits"][cand].sum() > 0 and res.totals["recovery"][cand].sum() > 0


def test_moments_mode_still_trains_candidates():
    model, cand = make_model("moments")
    model.train()
    before = model.gauss_params["means"].detach().clone()
    train_step(model)
    moved = (model.gauss_params["means"] != before).any(-1)
    assert moved[cand].any()  # as released: candidates keep rendering and training
