"""Pictures of training: loss and metric per epoch (matplotlib, extra ``plot``)."""
import os

from .errors import ConfigError


def plot_history(history, path, title=None):
    """Write a PNG with loss/val_loss and the metric (accuracy or r2, with its val_) per epoch.

    ``history`` is a :class:`fastbp.History` or its ``.history`` dict. Returns ``path``.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install 'fastbp[plot]'") from None
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs.get("loss"):
        raise ConfigError("plot_history needs a History (or its .history dict) with a 'loss' "
                          "entry per epoch")
    metric = "accuracy" if "accuracy" in logs else ("r2" if "r2" in logs else None)
    panels = [("loss", "loss")] + ([(metric, metric)] if metric else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    epochs = range(1, len(logs["loss"]) + 1)
    for ax, (key, label) in zip(axes[0], panels):
        ax.plot(epochs, logs[key], marker="o", ms=3, label=f"train {label}")
        if f"val_{key}" in logs:
            ax.plot(epochs, logs[f"val_{key}"], marker="o", ms=3, label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "loss" and min(logs[key]) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
