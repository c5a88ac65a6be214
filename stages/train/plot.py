"""The loss curves of a run as a PNG: train loss per step, val bpb at each validation."""

from __future__ import annotations

from pathlib import Path


def plot_curves(curves: dict, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps = [entry["step"] for entry in curves["train"]]
    loss_axis.plot(steps, [entry["loss"] for entry in curves["train"]], lw=0.8, color="tab:blue", label="train loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("train loss (nats/token)", color="tab:blue")
    if curves["val"]:
        bpb_axis = loss_axis.twinx()
        bpb_axis.plot([e["step"] for e in curves["val"]], [e["val_bpb"] for e in curves["val"]], "o-",
                      color="tab:red", label="val bpb")
        bpb_axis.set_ylabel("val bits per byte", color="tab:red")
    loss_axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
