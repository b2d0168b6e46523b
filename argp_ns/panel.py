"""The live pruning panel in nerfstudio's viewer.

A markdown handle of viser, created lazily once the viewer has set up the model's ``ViewerControl``.
Markdown handles have no update callbacks in viser 0.2.7 or 1.x, so writing ``.content`` from a training
callback, under the trainer's lock, cannot deadlock (a ``ViewerNumber.value`` write would, on viser 1.x).
Writes are throttled to ``min_interval`` seconds.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional


def panel_text(n_gaussians: int, last_event: Optional[Dict[str, Any]], next_step: Optional[int], next_rule: str) -> str:
    """The panel's markdown for a given state."""
    lines = [f"**Gaussians:** {n_gaussians:,}"]
    if last_event:
        lines.append(f"**Last prune:** step {last_event['step']:,} ({last_event['rule']}): "
                     f"-{last_event['removed']:,}, kept {last_event['kept']:,}")
    else:
        lines.append("**Last prune:** none yet")
    lines.append(f"**Next:** {next_rule} at step {next_step:,}" if next_step is not None else "**Next:** no prune scheduled")
    return "  \n".join(lines)


class LivePanel:
    """Owns the markdown handle; ``update`` is cheap and safe from training callbacks."""

    def __init__(self, viewer_control: Any, min_interval: float = 0.5) -> None:
        self.viewer_control = viewer_control
        self.min_interval = min_interval
        self._handle = None
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> bool:
        """Show ``text``; returns whether it was written (no viewer, or throttled: not written)."""
        server = getattr(self.viewer_control, "viser_server", None)
        if server is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        if self._handle is None:
            with server.gui.add_folder("Pruning"):
                self._handle = server.gui.add_markdown(text)
        else:
            self._handle.content = text
        self._last = now
        return True
