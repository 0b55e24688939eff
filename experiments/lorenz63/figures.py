"""The per-model and summary figures."""

import pathlib

import numpy as np

import tadiffeq.dynamics as tdd

from ..reporting import pyplot, save_figure
from .evaluation import model_name


def plot_model(cfg, row, arrays, refs, out: pathlib.Path):
    """Attractor (learned vs true), time series of the first initial condition and
    per-coordinate histograms."""
    plt = pyplot()
    if plt is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    name = model_name(row)
    truth = refs["long_truth"][0, refs["burn_in"] :]
    learned = arrays["long_run"]
    fig = plt.figure(figsize=(10, 5))
    lims = refs["ranges"]
    for i, (data, title) in enumerate(((truth, "true"), (learned, name))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        inside = np.all((data >= lims[:, 0]) & (data <= lims[:, 1]), -1)
        d = data[inside][:20000]
        ax.plot(d[:, 0], d[:, 1], d[:, 2], lw=0.2)
        ax.set_xlim(*lims[0])
        ax.set_ylim(*lims[1])
        ax.set_zlim(*lims[2])
        ax.set_title(f"{title} attractor ({100 * inside.mean():.0f}% in the box)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_zlabel("x3")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=0.92, wspace=0.1)
    save_figure(fig, out / "attractor.png", dpi=100)

    lt = np.arange(cfg.horizon + 1) * cfg.dt * tdd.LORENZ63_LYAPUNOV_EXPONENT
    fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True)
    pred, true = arrays["traj"][0], refs["truth"][0]
    for d in range(3):
        axes[d].plot(lt, true[:, d], "k", lw=1, label="exact flow")
        axes[d].plot(lt, pred[:, d], "C1", lw=1, label=name)
        axes[d].set_ylabel(f"x{d + 1}")
        axes[d].set_ylim(*refs["ranges"][d])
    err = np.linalg.norm(pred - true, axis=-1) / refs["scale"]
    axes[3].semilogy(lt, err, "C1")
    axes[3].axhline(cfg.threshold, color="k", ls="--", lw=0.8)
    axes[3].set_ylabel("normalised error")
    axes[3].set_xlabel("Lyapunov times")
    vpt = row["vpt_all"][0]
    for ax in axes:
        ax.axvline(vpt, color="C3", lw=0.8)
    axes[0].legend(loc="upper right")
    axes[0].set_title(f"{name}: first test initial condition (VPT {vpt:.2f})")
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.07, top=0.95, hspace=0.1)
    save_figure(fig, out / "timeseries.png", dpi=100)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    true_hist = np.asarray(refs["stats"].histograms)
    learned_hist = np.asarray(arrays["stats"].histograms)
    for d in range(3):
        edges = np.asarray(refs["stats"].edges)[d]
        centres = (edges[1:] + edges[:-1]) / 2
        axes[d].step(centres, true_hist[d], "k", where="mid", label="true")
        axes[d].step(centres, learned_hist[d], "C1", where="mid", label=name)
        axes[d].set_xlabel(f"x{d + 1} (TV {row['attractor']['tv'][d]:.3f})")
    axes[0].legend()
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.15, top=0.95, wspace=0.2)
    save_figure(fig, out / "histograms.png", dpi=100)


def plot_summary(rows, truth_row, out: pathlib.Path):
    """Training curves (loss, acceptance, substeps) and the VPT of every model."""
    plt = pyplot()
    if plt is None:
        return
    trained = [(i, r) for i, r in enumerate(rows) if r["history"] is not None]
    if trained:  # (the authors' models have no training history here)
        fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
        for i, r in trained:
            h = r["history"]
            it = h["iteration"]
            style = dict(color=f"C{i % 10}", lw=1, label=model_name(r))
            axes[0].semilogy(it, h["loss"], **style)
            axes[1].plot(it, [100 * s["acceptance"] for s in h["train"]], **style)
            axes[2].plot(it, [s["mean_substeps"] for s in h["train"]], **style)
        axes[0].set_ylabel("training MSE")
        axes[1].set_ylabel("accepted A2 (%)")
        axes[2].set_ylabel("mean substeps")
        axes[2].set_xlabel("L-BFGS iteration")
        axes[0].legend(fontsize=7, ncol=3)
        fig.subplots_adjust(left=0.12, right=0.98, bottom=0.06, top=0.98, hspace=0.08)
        save_figure(fig, out / "training_curves.png", dpi=100)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.boxplot([r["vpt_all"] for r in rows])
    ax.set_xticks(
        range(1, len(rows) + 1), [model_name(r) for r in rows], rotation=30, ha="right"
    )
    ax.set_ylabel("valid prediction time (Lyapunov times)")
    ax.axhline(
        truth_row["data_vpt"]["median"], color="k", ls="--", lw=0.8,
        label="the data themselves vs the exact flow (median)",
    )  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.35, top=0.97)
    save_figure(fig, out / "vpt.png", dpi=100)
