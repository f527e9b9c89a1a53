"""What `make demo` records and shows: the loop's steps as they happen (from the audit log, the
receiver's events and the monitor's windows), each against its time bound, the summary table,
demo/timeline.json and the plot (drift share, rollout weight and p99 against time, events
marked)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The loop's steps, in order: (name, what it means, bound in seconds after the previous step).
GOOD_STEPS = (
    ("drift", "the receiver got vigil.drift.detected", 240.0),
    ("published", "retrained on the recent window and published", 180.0),
    ("gated", "the model gate passed", 60.0),
    ("rollout", "the progressive rollout started", 60.0),
    ("promoted", "the rollout promoted the new version", 420.0),
    ("settled", "drift on the new production's windows under its threshold", 180.0),
)
BAD_STEPS = (
    ("drift", "the receiver got vigil.drift.detected", 240.0),
    ("published", "retrained on shuffled labels and published", 180.0),
    ("forced", "the gate failed; the rollout forced past it with a reason", 60.0),
    ("rollout", "the progressive rollout started", 60.0),
    ("rolled_back", "the rollout rolled the candidate back", 420.0),
)
TOTAL_BOUND_S = 900.0


@dataclass
class Point:
    """One second of the run: what the plot draws."""

    t: float
    share_drifted: float | None
    weight: float
    p99_ms: float | None
    production: str | None


@dataclass
class Timeline:
    """The steps reached and the series sampled, since `started` (monotonic)."""

    bad: bool
    started: float = field(default_factory=time.monotonic)
    reached: dict[str, float] = field(default_factory=dict)  # step -> seconds since start
    events: list[dict[str, Any]] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    failed_requests: int = 0
    requests: int = 0

    @property
    def steps(self) -> tuple[tuple[str, str, float], ...]:
        return BAD_STEPS if self.bad else GOOD_STEPS

    def now(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str, version: str | None = None, **figures: Any) -> None:
        """An event of the loop, printed as it happens."""
        at = self.now()
        weight = self.points[-1].weight if self.points else 0.0
        share = self.points[-1].share_drifted if self.points else None
        self.events.append({"t": round(at, 1), "event": what, "version": version,
                            "weight": weight, "share_drifted": share, **figures})
        extra = "  ".join(f"{k}={v}" for k, v in figures.items())
        print(f"{at:7.1f}s  {what:<34} version={version or '-':<4} weight={weight:<5g} "
              f"drift share={'-' if share is None else f'{share:.2f}'}  {extra}", flush=True)

    def reach(self, step: str, version: str | None = None, **figures: Any) -> None:
        if step in self.reached:
            return
        self.reached[step] = self.now()
        self.note(f"step {step}", version, **figures)

    def next_step(self) -> tuple[str, float] | None:
        """The first step not reached, and the time by which it must be."""
        previous = 0.0
        for name, _, bound in self.steps:
            if name not in self.reached:
                return name, previous + bound
            previous = self.reached[name]
        return None

    def overdue(self) -> str | None:
        """Why the run cannot pass any more (a step past its bound, the whole run too long)."""
        if self.now() > TOTAL_BOUND_S:
            return f"the run took more than {TOTAL_BOUND_S:.0f} s"
        pending = self.next_step()
        if pending is not None and self.now() > pending[1]:
            return f"step {pending[0]} not reached within its bound ({pending[1]:.0f} s)"
        return None

    def passed(self) -> bool:
        return (self.next_step() is None and self.now() <= TOTAL_BOUND_S
                and self.failed_requests == 0)

    def summary(self) -> str:
        lines = [f"{'step':<12} {'at (s)':>8} {'took (s)':>9} {'bound (s)':>10}  what", "-" * 80]
        previous = 0.0
        for name, what, bound in self.steps:
            at = self.reached.get(name)
            mark = "-" if at is None else f"{at:.1f}"
            took = "-" if at is None else f"{at - previous:.1f}"
            ok = at is not None and at - previous <= bound
            lines.append(f"{name:<12} {mark:>8} {took:>9} {bound:>10.0f}"
                         f"  {'ok ' if ok else 'LATE' if at is not None else 'MISSING'} {what}")
            previous = at if at is not None else previous
        lines.append(f"requests {self.requests}, failed {self.failed_requests}; "
                     f"{'PASSED' if self.passed() else 'FAILED'} in {self.now():.0f} s")
        return "\n".join(lines)

    def write(self, out_dir: Path) -> tuple[Path, Path | None]:
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"bad": self.bad, "passed": self.passed(), "seconds": round(self.now(), 1),
               "steps": {n: self.reached.get(n) for n, _, _ in self.steps},
               "bounds": {n: b for n, _, b in self.steps}, "requests": self.requests,
               "failed_requests": self.failed_requests, "events": self.events,
               "series": [asdict(p) for p in self.points]}
        path = out_dir / "timeline.json"
        path.write_text(json.dumps(doc, indent=1))
        return path, self.plot(out_dir / "timeline.png")

    def plot(self, path: Path) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot (pip install matplotlib)")
            return None
        t = [p.t for p in self.points]
        fig, axes = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
        series = ((axes[0], [p.share_drifted for p in self.points], "drift share (production)"),
                  (axes[1], [p.weight for p in self.points], "rollout weight"),
                  (axes[2], [p.p99_ms for p in self.points], "p99 (ms, production window)"))
        for ax, values, label in series:
            ax.step(t, [float("nan") if v is None else v for v in values], where="post")
            ax.set_ylabel(label, fontsize=8)
            for name, at in self.reached.items():
                ax.axvline(at, color="grey", linestyle=":", linewidth=0.8)
                if ax is axes[0]:
                    ax.annotate(name, (at, 1.0), xycoords=("data", "axes fraction"),
                                rotation=90, fontsize=7, va="top")
        axes[2].set_xlabel("seconds since start")
        fig.suptitle("make demo" + (" DEMO_BAD=1" if self.bad else "") + ": drift -> retrain -> "
                     "rollout -> " + ("roll back" if self.bad else "promote"))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
