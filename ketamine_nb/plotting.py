"""Figures: pure functions that take results and return a matplotlib figure."""

from __future__ import annotations

import numpy as np

__all__ = ["ARM_COLORS", "DELTA_MD_LABEL", "MD_LABEL", "MD_SCALE", "plot_session_qc"]

#: One colour per arm everywhere (Okabe-Ito palette, safe for colour-blind readers).
ARM_COLORS = {"ketamine": "#D55E00", "saline": "#0072B2"}

#: MD is shown in 10⁻³ mm²/s: multiply values in mm²/s by this.
MD_SCALE = 1e3

#: Axis labels with units.
MD_LABEL = "MD (10⁻³ mm²/s)"
DELTA_MD_LABEL = "ΔMD = post − pre (10⁻³ mm²/s)"


def plot_session_qc(dwi_img, gtab, mask_img, qc: dict, *, figure=None, title: str = ""):
    """Quality-control figure of one DWI session.

    Top row: three orthogonal slices of the mean b0 with the brain-mask
    outline. Bottom: the mean masked signal of every volume (b0 and
    diffusion-weighted separately), with the volumes flagged as outliers
    marked in red, and the numbers behind the flags in the title.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients.
    mask_img : nibabel.Nifti1Image
        Brain mask.
    qc : dict
        Output of :func:`ketamine_nb.dwi.qc_session`.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first); a new one if omitted.
    title : str, default=""
        Prefix of the title (e.g. ``"sub-001 ses-pre"``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    b0 = data[..., gtab.b0s_mask].mean(-1)
    fig = figure if figure is not None else plt.figure(figsize=(10, 6))
    fig.clf()
    grid = fig.add_gridspec(2, 3, height_ratios=[1.3, 1])
    centre = [int(np.mean(np.nonzero(mask)[k])) if mask.any() else s // 2
              for k, s in enumerate(b0.shape)]
    views = [("sagittal", b0[centre[0]].T, mask[centre[0]].T),
             ("coronal", b0[:, centre[1]].T, mask[:, centre[1]].T),
             ("axial", b0[:, :, centre[2]].T, mask[:, :, centre[2]].T)]
    vmax = np.percentile(b0[mask], 99) if mask.any() else b0.max()
    for k, (name, img, m) in enumerate(views):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img, origin="lower", cmap="gray", vmin=0, vmax=vmax)
        ax.contour(m.astype(float), levels=[0.5], colors="#E69F00", linewidths=0.8)
        ax.set_title(f"mean b0, {name}", fontsize=9)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, :])
    vol_mean = np.array([data[..., v][mask].mean() if mask.any() else 0.0
                         for v in range(data.shape[3])])
    idx = np.arange(data.shape[3])
    ax.plot(idx[gtab.b0s_mask], vol_mean[gtab.b0s_mask], "o", color="#0072B2", label="b = 0")
    ax.plot(idx[~gtab.b0s_mask], vol_mean[~gtab.b0s_mask], "o", color="#009E73",
            label="diffusion-weighted")
    bad = qc.get("outlier_volumes", [])
    if bad:
        ax.plot(idx[bad], vol_mean[bad], "x", color="#D55E00", ms=10, mew=2,
                label="outlier volume")
    ax.set_xlabel("volume")
    ax.set_ylabel("mean signal in mask (a.u.)")
    ax.legend(fontsize=8, loc="best")
    flags = ", ".join(qc.get("flags", [])) or "none"
    fig.suptitle(f"{title}  b0 SNR {qc.get('snr_b0', float('nan')):.1f}  "
                 f"mask {qc.get('mask_volume_ml', float('nan')):.0f} ml  flags: {flags}",
                 fontsize=10)
    return fig
