"""Plots of a training run as PNG: the training loss curve (from the run's
WatchModelVersion events) and one ROC curve per label (from its evaluation).

matplotlib is an optional extra (`pip install "textft[plots]"`); it is
imported only when a plot is drawn, and without pyplot (no global state, no
display needed).

    from textft import Client
    from textft.plots import save_run_plots
    with Client() as client:
        for path in save_run_plots(client, "models/sentiment/versions/v1", "plots/"):
            print(path)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .v1 import trainer_pb2

if TYPE_CHECKING:
    from .client import Client

EV = trainer_pb2.ModelVersionEvent
_FINAL = {
    trainer_pb2.ModelVersion.STATE_READY,
    trainer_pb2.ModelVersion.STATE_FAILED,
    trainer_pb2.ModelVersion.STATE_CANCELLED,
}


class PlotsUnavailable(ImportError):
    """matplotlib is not installed (the SDK does not require it)."""


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError:
        raise PlotsUnavailable(
            'plots need matplotlib, an optional extra of the SDK: pip install "textft[plots]"'
            " (or pip install matplotlib)"
        ) from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


@dataclass
class LossCurve:
    """Training loss by step (and evaluation loss where the run logged one)."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.losses)


def loss_curve(events: Iterable[trainer_pb2.ModelVersionEvent]) -> LossCurve:
    """The loss points of a run's events: KIND_PROGRESS events with a loss > 0
    (x is the optimizer step, or the point's index when a step is missing)."""
    curve = LossCurve()
    for event in events:
        step = int(event.progress.step) if event.HasField("progress") else 0
        if event.kind == EV.KIND_PROGRESS and event.loss > 0:
            curve.steps.append(step or len(curve.steps) + 1)
            curve.losses.append(float(event.loss))
        elif event.kind == EV.KIND_EVALUATION:
            value = event.eval_metrics.get("loss", event.eval_metrics.get("eval_loss", 0.0))
            if value > 0:
                curve.eval_steps.append(step or (curve.steps[-1] if curve.steps else 0))
                curve.eval_losses.append(float(value))
    return curve


def save_loss_curve(
    events: Iterable[trainer_pb2.ModelVersionEvent] | LossCurve, path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Saves the training loss curve as PNG; ValueError when there is no loss point."""
    curve = events if isinstance(events, LossCurve) else loss_curve(events)
    if not curve:
        raise ValueError("no training loss in the run's events (it logged no step, or failed before training)")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(curve.steps, curve.losses, marker="o", markersize=3, linewidth=1.5, label="training loss")
    if curve.eval_losses:
        ax.plot(curve.eval_steps, curve.eval_losses, marker="s", linestyle="--", label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def save_roc_curves(
    evaluation: trainer_pb2.Evaluation | trainer_pb2.ModelVersion, path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Saves one ROC curve per label (one-vs-rest) as PNG, with each label's AUC;
    ValueError when the evaluation has no ROC curve (generation runs)."""
    if isinstance(evaluation, trainer_pb2.ModelVersion):
        evaluation = evaluation.evaluation
    if not evaluation.roc_curves:
        raise ValueError("the evaluation has no ROC curves (only classification runs have them)")
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot()
    styles = ("-", "--", "-.")  # curves that coincide (two labels mirror each other) stay visible
    for i, curve in enumerate(evaluation.roc_curves):
        auc = evaluation.roc_auc_per_label.get(curve.label)
        label = curve.label if auc is None else f"{curve.label} (AUC {auc:.3f})"
        ax.plot(
            list(curve.false_positive_rate),
            list(curve.true_positive_rate),
            linewidth=1.8,
            linestyle=styles[i % len(styles)],
            label=label,
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC curves (one vs rest)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def save_run_plots(client: Client, name: str, out_dir: str | os.PathLike[str], wait: bool = False) -> list[Path]:
    """Saves `{model}-{version}-loss.png` and, for classification,
    `{model}-{version}-roc.png` under out_dir; returns the paths. A run still
    going raises ValueError unless `wait` (then it waits for the run's end)."""
    _figure()  # fail before any RPC when matplotlib is missing
    version = client.get_model_version(name)
    if version.state not in _FINAL and not wait:
        state = trainer_pb2.ModelVersion.State.Name(version.state)
        raise ValueError(f"{name} is still {state}: plot it when it has finished (or wait for it)")
    events = list(client.watch(name))  # the whole history; ends at the final state
    if version.state not in _FINAL:
        version = client.get_model_version(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(part for i, part in enumerate(name.split("/")) if i % 2 == 1)  # models/m/versions/v -> m-v
    saved: list[Path] = []
    curve = loss_curve(events)
    if curve:
        saved.append(save_loss_curve(curve, out / f"{stem}-loss.png", f"training loss: {name}"))
    if version.evaluation.roc_curves:
        saved.append(save_roc_curves(version, out / f"{stem}-roc.png", f"ROC curves: {name}"))
    if not saved:
        raise ValueError(f"{name} has neither a training loss nor ROC curves to plot")
    return saved


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png")
    return target


__all__ = ["LossCurve", "PlotsUnavailable", "loss_curve", "save_loss_curve", "save_roc_curves", "save_run_plots"]
