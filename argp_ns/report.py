"""The pruning report of a run: ``pruning_report.json`` and ``pruning_report.png`` beside its config.

It holds every prune event (step, rule, removed, kept, and the eval-view PSNR right before and right
after it when the run has evaluation data), the Gaussian count at every refine step, and the final count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


@dataclass
class PruningReport:
    """Accumulated during training; written after each prune and at the end."""

    method: str
    counts: List[List[int]] = field(default_factory=list)
    events: List[Dict[str, Any]] = field(default_factory=list)
    final_gaussians: Optional[int] = None

    def add_count(self, step: int, n: int) -> None:
        """Gaussian count at a step (kept once per step)."""
        if not self.counts or self.counts[-1][0] != step:
            self.counts.append([int(step), int(n)])

    def summary(self) -> str:
        """One paragraph for the end of training."""
        if not self.events:
            return f"{self.method}: no prune happened; {self.final_gaussians:,} Gaussians."
        first = self.events[0]["kept"] + self.events[0]["removed"]
        removed = sum(e["removed"] for e in self.events)
        rules = sorted({e["rule"] for e in self.events})
        psnr = [e for e in self.events if e.get("psnr_before") is not None]
        text = (f"{self.method}: {len(self.events)} prune events ({', '.join(rules)}) removed {removed:,} Gaussians; "
                f"{self.final_gaussians:,} left ({100.0 * self.final_gaussians / max(first, 1):.1f}% of {first:,} before the first prune).")
        if psnr:
            drop = sum(e["psnr_before"] - e["psnr_after"] for e in psnr)
            text += f" Eval PSNR changed by {-drop:+.2f} dB in total across the prunes themselves."
        return text

    def write(self, run_dir: Path) -> Path:
        """Write the JSON and the plot beside the run's config; returns the JSON path."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "pruning_report.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        self._plot(run_dir / "pruning_report.png")
        return path

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        if self.counts:
            steps, ns = zip(*self.counts)
            ax.plot(steps, ns, color="tab:blue", label="Gaussians")
        for e in self.events:
            ax.axvline(e["step"], color="tab:red" if e["rule"] != "aop" else "tab:orange", alpha=0.4, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("Gaussians")
        ax.set_title(f"{self.method}: Gaussian count (prune events marked)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
