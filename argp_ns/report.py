"""The pruning report of a run: ``pruning_report.json`` and ``pruning_report.png`` beside its config.

It holds every prune event (step, rule, removed, kept, and the eval-view PSNR right before and right
after it when the run has evaluation data), the Gaussian count at every refine step, and the final count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


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
        """Gaussian count as a step function (a prune is a step down), prune events as vertical lines, and the
        eval-view PSNR right before (open marker) and after (filled marker) each measured prune on a second axis."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.2))
        handles = []
        if self.counts:
            steps, ns = zip(*sorted(self.counts))
            handles += ax.plot(steps, ns, drawstyle="steps-post", color="tab:blue", lw=1.6, label="Gaussians")
        for e in self.events:
            ax.axvline(e["step"], color=_rule_color(e["rule"]), alpha=0.35, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("Gaussians", color="tab:blue")
        ax.ticklabel_format(axis="y", style="plain")
        pairs = psnr_pairs(self.events)
        if pairs:
            ax2 = ax.twinx()
            for step, before, after, rule in pairs:
                color = _rule_color(rule)
                ax2.plot([step, step], [before, after], color=color, lw=1.2)
                ax2.plot([step], [before], marker="o", mfc="white", mec=color, ls="none")
                ax2.plot([step], [after], marker="o", color=color, ls="none")
            handles += ax2.plot([], [], marker="o", mfc="white", mec="k", ls="none", label="eval PSNR before prune")
            handles += ax2.plot([], [], marker="o", color="k", ls="none", label="eval PSNR after prune")
            ax2.set_ylabel("eval PSNR (dB)")
        rules = sorted({e["rule"] for e in self.events})
        handles += [ax.plot([], [], color=_rule_color(r), alpha=0.6, lw=1, label=f"{r} prune")[0] for r in rules]
        if handles:
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(handles), 5),
                      fontsize=8, frameon=False)
        ax.set_title(f"{self.method}: Gaussian count and eval PSNR around prunes")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def psnr_pairs(events: List[Dict[str, Any]]) -> List[Tuple[int, float, float, str]]:
    """(step, PSNR before, PSNR after, rule) for each event measured on both sides, one per step and pair
    (events of one step share the measurement); a scored rule wins over ``aop`` for the colour."""
    out: Dict[Tuple[int, float, float], str] = {}
    for e in events:
        before, after = e.get("psnr_before"), e.get("psnr_after")
        if before is None or after is None:
            continue
        key = (int(e["step"]), float(before), float(after))
        if key not in out or out[key] == "aop":
            out[key] = e["rule"]
    return [(s, b, a, r) for (s, b, a), r in sorted(out.items())]


def _rule_color(rule: str) -> str:
    """Orange for AOP's per-refine prunes, red for the scored rules (IRP, SafeguardGS and its baselines)."""
    return "tab:orange" if rule == "aop" else "tab:red"
