"""The evaluation's figures (matplotlib, Agg: no display needed), as PNG bytes by file name.

- ``top_view.png``: ground truth (grey line) and the published positions seen from above,
  coloured by position error (wrong places in red crosses), keyframes as triangles;
- ``error_cdf.png``: cumulative distribution of the position and rotation errors, with the
  recall bounds marked;
- ``success_along_run.png``: the success rate over a sliding window of queries along the run,
  so a stretch where relocalization fails stands out.
"""
from __future__ import annotations

import io

import numpy as np

from roma_ros.mapping.evaluate import RECALLS, QueryRecord
from roma_ros.mapping.trajectory import NS


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plots(records: list[QueryRecord], keyframe_positions: np.ndarray | None = None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display, and no GUI backend probing
    from matplotlib import pyplot as plt

    truth = np.array([r.truth[0] for r in records if r.truth is not None]).reshape(-1, 3)
    posed = [r for r in records if r.pose is not None and r.position_error_m is not None]
    out = {}

    fig, ax = plt.subplots(figsize=(6, 5))
    if len(truth):
        ax.plot(truth[:, 0], truth[:, 1], "-", color="0.6", lw=1.5, label="ground truth")
    if keyframe_positions is not None and len(keyframe_positions):
        ax.plot(keyframe_positions[:, 0], keyframe_positions[:, 1], "^", color="tab:green", ms=6, label="keyframes")
    good = [r for r in posed if not r.wrong_place]
    if good:
        xy = np.array([r.pose[0][:2] for r in good])
        err = np.array([r.position_error_m for r in good]) * 100
        points = ax.scatter(xy[:, 0], xy[:, 1], c=err, cmap="viridis", s=18, vmin=0, vmax=max(25.0, float(err.max())),
                            label="relocalized", zorder=3)
        fig.colorbar(points, ax=ax, label="position error (cm)")
    wrong = [r for r in posed if r.wrong_place]
    if wrong:
        xy = np.array([r.pose[0][:2] for r in wrong])
        ax.plot(xy[:, 0], xy[:, 1], "x", color="red", ms=8, label="wrong place", zorder=4)
    ax.set(xlabel="x (m)", ylabel="y (m)", title="top view", aspect="equal")
    ax.legend(loc="best", fontsize=8)
    out["top_view.png"] = _png(fig)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    n_truth = max(1, sum(r.truth is not None for r in records))
    for ax, values, unit, bounds in ((a1, [r.position_error_m * 100 for r in posed], "position error (cm)",
                                      sorted({m * 100 for m, _ in RECALLS})),
                                     (a2, [r.rotation_error_deg for r in posed], "rotation error (deg)",
                                      sorted({d for _, d in RECALLS}))):
        values = np.sort(values)
        # Over all queries with truth: the curve tops out at the share that got a pose.
        ax.step(values, np.arange(1, len(values) + 1) / n_truth, where="post")
        for b in bounds:
            ax.axvline(b, color="0.5", ls="--", lw=1)
        ax.set(xlabel=unit, ylabel="share of queries", ylim=(0, 1.02), xscale="log" if len(values) else "linear")
    fig.suptitle("error CDF (published poses, over all queries with ground truth)")
    out["error_cdf.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    scored = [r for r in records if r.truth is not None]
    if scored:
        t = np.array([r.stamp_ns for r in scored], dtype=np.float64)
        t = (t - t[0]) / NS
        ok = np.array([r.pose is not None and not r.wrong_place for r in scored], dtype=float)
        window = max(1, min(20, len(ok) // 5))
        rolling = np.convolve(ok, np.ones(window) / window, mode="same")
        ax.plot(t, rolling, "-", label=f"success rate ({window}-query window)")
        ax.plot(t, ok, "|", color="tab:green", alpha=0.6, label="query succeeded (1) / not (0)")
    ax.set(xlabel="time in the run (s)", ylabel="success", ylim=(-0.05, 1.05), title="success rate along the run")
    ax.legend(loc="lower left", fontsize=8)
    out["success_along_run.png"] = _png(fig)
    plt.close(fig)
    return out
