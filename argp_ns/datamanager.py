"""The training views of the lean step: nerfstudio's full-image datamanager without the per-step camera copy.

nerfstudio's ``FullImageDatamanager.next_train`` slices its ``Cameras`` for the sampled view and moves the slice to
the device at every step (a tensor dataclass rebuilt field by field: about 0.2 ms of Python on the CPU, more than a
whole fused loss pass on the GPU), and copies a pinned CPU-cached image with a blocking copy (a host
synchronisation, for scenes of over 500 views). :class:`LeanDatamanager` makes each training view's one-camera
``Cameras`` once, on the device, and hands out that object; the views come in the same order (nerfstudio's own
sampler) with the same images. The models of this plugin never mutate the camera they are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple, Type

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig


@dataclass
class LeanDatamanagerConfig(FullImageDatamanagerConfig):
    """nerfstudio's full-image datamanager config, building :class:`LeanDatamanager`."""

    _target: Type = field(default_factory=lambda: LeanDatamanager)


class LeanDatamanager(FullImageDatamanager):
    """``FullImageDatamanager`` whose training cameras are made once per view and kept (see the module doc)."""

    config: LeanDatamanagerConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept_cameras: Dict[int, Cameras] = {}

    def train_camera(self, index: int) -> Cameras:
        """The one-camera ``Cameras`` of training view ``index`` on the device, ``metadata["cam_idx"] = index``
        (in a dict of its own: the full camera set's metadata is left as it is), made on first use."""
        if index not in self._kept_cameras:
            camera = self.train_cameras[index : index + 1].to(self.device)
            camera.metadata = {**(camera.metadata or {}), "cam_idx": index}
            self._kept_cameras[index] = camera
        return self._kept_cameras[index]

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        """The next view of nerfstudio's sampler (a new epoch's order once the last one is used up): its kept
        camera and its cached data (a shallow copy; the image on the device, copied without blocking the host)."""
        index = self.train_unseen_cameras.pop(0)
        if not self.train_unseen_cameras:
            self.train_unseen_cameras = self.sample_train_cameras()
        data = dict(self.cached_train[index])
        data["image"] = data["image"].to(self.device, non_blocking=True)
        return self.train_camera(index), data
