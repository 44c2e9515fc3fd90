"""Figures: pure functions that take results and return a matplotlib figure.

Every function draws into a new figure, or into the ``ax=`` (``figure=``
for multi-panel and nilearn figures) it is given, and returns the
:class:`matplotlib.figure.Figure`; none calls ``plt.show()``. Statistics
are taken from the tables of :mod:`ketamine_nb.stats` and
:mod:`ketamine_nb.robustness`, never recomputed here; the only numbers
computed are what a picture needs (a least-squares line to draw, a colour
range). Conventions: one colour per arm everywhere (:data:`ARM_COLORS`),
colour-blind-safe palettes (Okabe-Ito, ColorBrewer ``RdBu``), MD and ΔMD
shown in 10⁻³ mm²/s (:data:`MD_SCALE`), and units on every axis.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .exceptions import InputError

__all__ = [
    "ARM_COLORS",
    "DELTA_MD_LABEL",
    "MD_LABEL",
    "MD_SCALE",
    "plot_delta_by_arm",
    "plot_delta_md_map",
    "plot_dwi_slices",
    "plot_forest",
    "plot_glass_stat",
    "plot_gradients",
    "plot_md_map",
    "plot_registration",
    "plot_robustness",
    "plot_scatter",
    "plot_session_qc",
    "plot_truth_vs_measured",
]

#: One colour per arm everywhere (Okabe-Ito palette, safe for colour-blind readers).
ARM_COLORS = {"ketamine": "#D55E00", "saline": "#0072B2"}

#: MD is shown in 10⁻³ mm²/s: multiply values in mm²/s by this.
MD_SCALE = 1e3

#: Axis labels with units.
MD_LABEL = "MD (10⁻³ mm²/s)"
DELTA_MD_LABEL = "ΔMD = post − pre (10⁻³ mm²/s)"

# The rest of the Okabe-Ito palette (without the two arm colours): one colour
# per structure on anatomical images; left solid, right dashed.
_REGION_PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7", "#000000")
_OTHER_ARM = "#999999"
_Z95 = 1.959964  # two-sided 95 % normal quantile: estimate ± 1.96 SE
_DIVERGING = "RdBu_r"  # ColorBrewer, colour-blind safe; blue = decrease
_SEQUENTIAL = "YlOrRd"  # ColorBrewer, for maps that are never negative (−log10 p)
_ROBUSTNESS_CHOICES = ("fit_method", "probability_threshold", "csf_md_threshold", "outcome",
                       "change", "covariates")


def _axes(ax, figsize):
    """Return ``(figure, ax)``: the given axes' figure, or a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return _root_figure(ax), ax


def _root_figure(ax):
    fig = ax.figure
    while getattr(fig, "figure", fig) is not fig:  # a SubFigure's parent
        fig = fig.figure
    return fig


def _new_figure(figure, figsize):
    """Return ``figure`` cleared, or a new figure."""
    import matplotlib.pyplot as plt

    if figure is None:
        return plt.figure(figsize=figsize)
    figure.clf()
    return figure


def _arm_order(arms) -> list:
    present = list(pd.unique(pd.Series(arms).dropna()))
    return [a for a in ARM_COLORS if a in present] + [a for a in present if a not in ARM_COLORS]


def _arm_color(arm) -> str:
    return ARM_COLORS.get(arm, _OTHER_ARM)


def _region_styles(names) -> dict:
    """Colour per structure (``_L``/``_R`` share one), solid left, dashed right."""
    bases = list(dict.fromkeys(re.sub(r"_[LR]$", "", n) for n in names))
    colour = {b: _REGION_PALETTE[k % len(_REGION_PALETTE)] for k, b in enumerate(bases)}
    return {n: (colour[re.sub(r"_[LR]$", "", n)], "--" if n.endswith("_R") else "-")
            for n in names}


def _colorbar(fig, rect, cmap, vmin, vmax, label):
    """Add a labelled colorbar in its own axes; return the axes."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes(rect)
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, label=label)
    return cax


def _scaled(img, scale):
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * np.float32(scale), img.affine)


# Layout of the nilearn figures: brain views left, colorbar right, legend below.
_BRAIN_RECT = (0.0, 0.04, 0.88, 0.86)
_BRAIN_RECT_LEGEND = (0.0, 0.16, 0.88, 0.74)
_CBAR_RECT = (0.9, 0.18, 0.018, 0.64)


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


# --------------------------------------------------------------------- raw data

def plot_dwi_slices(dwi_img, gtab, *, volumes=None, axis: str = "axial", slice_index=None,
                    figure=None):
    """Show one slice of several DWI volumes side by side, with their b-values.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI (shown in the closest RAS orientation, left of the subject on
        the left of each panel, as nilearn shows images).
    gtab : dipy.core.gradients.GradientTable
        Its gradients (b-values in s/mm²).
    volumes : sequence of int, optional
        Volumes to show; default: the first b0 and the first three
        diffusion-weighted volumes.
    axis : {"axial", "coronal", "sagittal"}, default="axial"
        Slice orientation.
    slice_index : int, optional
        Slice along ``axis`` (RAS voxel index); default: the middle one.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per volume, titled with its index, b-value and direction.
        Each panel has its own grey scale (0 to the 99th percentile of the
        slice): a b = 1000 s/mm² volume has a fraction of the b0's signal.
    """
    import nibabel as nib

    axes_of = {"sagittal": 0, "coronal": 1, "axial": 2}
    if axis not in axes_of:
        raise InputError(f"axis {axis!r} is unknown; use {', '.join(axes_of)}")
    if len(dwi_img.shape) != 4:
        raise InputError(f"a 4D DWI is needed, got shape {dwi_img.shape}")
    if volumes is None:
        b0 = np.flatnonzero(gtab.b0s_mask)[:1]
        volumes = [*b0, *np.flatnonzero(~gtab.b0s_mask)[:3]]
    volumes = [int(v) for v in volumes]
    img = nib.as_closest_canonical(dwi_img)
    k = axes_of[axis]
    index = img.shape[k] // 2 if slice_index is None else int(slice_index)
    zooms = img.header.get_zooms()[:3]
    shown = [z for j, z in enumerate(zooms) if j != k]
    fig = _new_figure(figure, (2.4 * len(volumes) + 0.4, 3.0))
    fig.set_layout_engine("constrained")
    axs = fig.subplots(1, len(volumes), squeeze=False)[0]
    for ax, v in zip(axs, volumes, strict=True):
        sl = np.take(np.asarray(img.dataobj[..., v], np.float32), index, axis=k).T
        vmax = np.percentile(sl[sl > 0], 99) if (sl > 0).any() else 1.0
        ax.imshow(sl, origin="lower", cmap="gray", vmin=0, vmax=vmax,
                  aspect=shown[1] / shown[0])
        b = gtab.bvals[v]
        g = "" if gtab.b0s_mask[v] else "\ng = ({:.2f}, {:.2f}, {:.2f})".format(*gtab.bvecs[v])
        ax.set_title(f"volume {v}: b = {b:.0f} s/mm²{g}", fontsize=9)
        ax.set_axis_off()
        if k != 0:
            ax.text(0.02, 0.02, "L", color="w", transform=ax.transAxes, fontsize=8)
            ax.text(0.98, 0.02, "R", color="w", ha="right", transform=ax.transAxes, fontsize=8)
    fig.suptitle(f"DWI, {axis} slice {index}", fontsize=10)
    return fig


def plot_gradients(gtab, *, ax=None):
    """Plot the diffusion gradient directions on the unit sphere.

    Every direction is drawn twice, as +g (filled) and −g (open): the
    diffusion signal is symmetric, so both sample the same tensor axis and
    a good scheme covers the sphere evenly with the pair.

    Parameters
    ----------
    gtab : dipy.core.gradients.GradientTable
        Gradients (b-values in s/mm²); b0 volumes are left out.
    ax : mpl_toolkits.mplot3d.axes3d.Axes3D, optional
        A 3D axes (``fig.add_subplot(projection="3d")``) to draw into.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, with a colour bar of the b-value.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig = plt.figure(figsize=(5.5, 4.6), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    elif getattr(ax, "name", "") != "3d":
        raise InputError("plot_gradients needs a 3D axes: fig.add_subplot(projection='3d')")
    fig = _root_figure(ax)
    dw = ~gtab.b0s_mask
    g, b = gtab.bvecs[dw], gtab.bvals[dw]
    u, v = np.mgrid[0:2 * np.pi:25j, 0:np.pi:13j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                      color="0.85", linewidth=0.4)
    sc = ax.scatter(*g.T, c=b, cmap="cividis_r", vmin=0, vmax=max(b.max(initial=0), 1), s=28,
                    depthshade=False, label="+g")
    ax.scatter(*(-g).T, s=28, depthshade=False, facecolors="none", edgecolors=sc.to_rgba(b),
               label="−g")
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xticks=[-1, 0, 1], yticks=[-1, 0, 1],
           zticks=[-1, 0, 1], xlabel="$g_x$", ylabel="$g_y$", zlabel="$g_z$")
    ax.set_box_aspect((1, 1, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(sc, ax=ax, shrink=0.6, label="b-value (s/mm²)")
    shells = ", ".join(f"{s:.0f}" for s in np.unique(np.round(b, -1)))
    ax.set_title(f"{len(g)} directions, b = {shells} s/mm²", fontsize=10)
    return fig


# --------------------------------------------------------------------- maps

def _region_volumes(regions_img, region_names):
    """Split a 3D or 4D region image into ``[(name, 3D image)]``."""
    import nibabel as nib

    data = np.asarray(regions_img.dataobj, np.float32)
    if data.ndim == 3:
        data = data[..., None]
    names = list(region_names) if region_names is not None else \
        [f"region {k + 1}" for k in range(data.shape[3])]
    if len(names) != data.shape[3]:
        raise InputError(f"{len(names)} region names for {data.shape[3]} region volumes")
    return [(n, nib.Nifti1Image(data[..., k], regions_img.affine)) for k, n in enumerate(names)]


def _centre(vols, threshold):
    """Mean of the regions' centres (world mm): cuts that pass near every region."""
    centres = []
    for _, vol in vols:
        ijk = np.array(np.nonzero(np.asarray(vol.dataobj) >= threshold), float)
        if ijk.size:
            centres.append(vol.affine[:3, :3] @ ijk.mean(axis=1) + vol.affine[:3, 3])
    return tuple(np.mean(centres, axis=0)) if centres else None


def plot_md_map(md_img, *, regions_img=None, region_names=None, figure=None,
                display_mode: str = "ortho", cut_coords=None, kind: str = "md", vmax=None,
                probability_threshold=None, title=None):
    """Show an MD (or FA) map in native space with the regions as contours.

    Parameters
    ----------
    md_img : nibabel.Nifti1Image
        3D MD map in mm²/s (shown in 10⁻³ mm²/s), or an FA map with
        ``kind="fa"``.
    regions_img : nibabel.Nifti1Image, optional
        Region probabilities (0-1) on a grid in the same space: 4D, one
        volume per region (e.g. the study regions brought to the DWI grid
        with :func:`ketamine_nb.registration.apply_transform`), or 3D for one
        region.
    region_names : sequence of str, optional
        Names of the region volumes, in order (the legend).
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    display_mode : str, default="ortho"
        nilearn display mode (``"ortho"``, ``"z"``, ``"x"``, ``"yz"``...).
    cut_coords : sequence of float, optional
        Cut positions (world mm); default for ``"ortho"`` with regions: the
        mean of the regions' centres, so that most contours are in view.
    kind : {"md", "fa"}, default="md"
        What the map holds (sets the scale and the colour-bar label).
    vmax : float, optional
        Top of the grey scale in display units; default 2 (10⁻³ mm²/s: grey
        matter about 0.8, CSF saturates) for MD, 1 for FA.
    probability_threshold : float, optional
        Contour level; default
        :data:`ketamine_nb.regions.DEFAULT_PROBABILITY_THRESHOLD`, the
        pipeline's region definition.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure: the map (nilearn ``plot_img``), one contour set per region
        and cut (``display.add_contours``), a legend and a colour bar with units.
    """
    from matplotlib.lines import Line2D
    from nilearn import plotting

    from .regions import DEFAULT_PROBABILITY_THRESHOLD

    if kind not in ("md", "fa"):
        raise InputError(f"kind {kind!r} is unknown; use 'md' or 'fa'")
    scale, label = (MD_SCALE, MD_LABEL) if kind == "md" else (1.0, "FA (unitless, 0-1)")
    vmax = (2.0 if kind == "md" else 1.0) if vmax is None else vmax
    level = DEFAULT_PROBABILITY_THRESHOLD if probability_threshold is None \
        else probability_threshold
    vols = _region_volumes(regions_img, region_names) if regions_img is not None else []
    if cut_coords is None and vols and display_mode == "ortho":
        cut_coords = _centre(vols, level)
    fig = _new_figure(figure, (10, 4.4))
    display = plotting.plot_img(_scaled(md_img, scale), cut_coords=cut_coords,
                                display_mode=display_mode, figure=fig,
                                axes=_BRAIN_RECT_LEGEND if vols else _BRAIN_RECT,
                                cmap="gray", vmin=0, vmax=vmax, colorbar=False,
                                black_bg=True, draw_cross=False)
    styles = _region_styles([n for n, _ in vols])
    for name, vol in vols:
        colour, ls = styles[name]
        display.add_contours(vol, levels=[level], colors=[colour], linewidths=1.4,
                             linestyles=ls)
    if vols:
        handles = [Line2D([], [], color=c, ls=ls, lw=1.6, label=n)
                   for n, (c, ls) in styles.items()]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7),
                   fontsize=8, frameon=False, title=f"regions (probability ≥ {level:g})",
                   title_fontsize=8)
    _colorbar(fig, _CBAR_RECT, "gray", 0, vmax, label)
    fig.suptitle(title or ("MD, native space" if kind == "md" else "FA, native space"),
                 fontsize=11)
    return fig


def plot_registration(b0_img, transform, *, template=None, figure=None,
                      display_mode: str = "ortho", cut_coords=(0, -18, 8), title=None):
    """Check a session's fit to the template: template edges over the b0 in MNI space.

    Parameters
    ----------
    b0_img : nibabel.Nifti1Image
        3D mean b0 in native space (``ketamine_nb.dwi.mean_b0``).
    transform : numpy.ndarray, shape (4, 4)
        The session's MNI-to-native matrix (``Results.transform``).
    template : nibabel.Nifti1Image, optional
        Template whose grid the b0 is resampled to and whose edges are drawn;
        default :func:`ketamine_nb.registration.load_template` at 2 mm.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    display_mode : str, default="ortho"
        nilearn display mode.
    cut_coords : sequence of float, default=(0, -18, 8)
        Cut positions in MNI mm (through the ventricles, the amygdala and
        hippocampus, where misregistration shows first).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The resampled b0 (nilearn ``plot_anat``) with the template's edges
        (``display.add_edges``). A good fit puts the edges on the b0's brain
        outline and ventricles.
    """
    from nilearn import plotting

    from .registration import apply_transform, load_template

    if len(b0_img.shape) != 3:
        raise InputError(f"a 3D b0 is needed, got shape {b0_img.shape}; use "
                         "ketamine_nb.dwi.mean_b0(dwi_img, gtab)")
    template = load_template(2.0) if template is None else template
    b0_mni = apply_transform(b0_img, transform, target=template, direction="to_mni")
    fig = _new_figure(figure, (10, 4))
    display = plotting.plot_anat(b0_mni, cut_coords=cut_coords, display_mode=display_mode,
                                 figure=fig, axes=(0.0, 0.0, 1.0, 0.9), colorbar=False,
                                 dim=0, draw_cross=False, black_bg=True)
    display.add_edges(template, color="#E69F00")
    fig.suptitle(title or "mean b0 resampled to MNI, template edges in orange", fontsize=11)
    return fig


def _symmetric_vmax(data, vmax):
    if vmax is not None:
        return float(vmax)
    nz = np.abs(data[np.isfinite(data) & (data != 0)])
    return float(np.percentile(nz, 99)) if nz.size else 1.0


def plot_delta_md_map(img, *, figure=None, display_mode: str = "ortho", cut_coords=None,
                      vmax=None, threshold=1e-6, bg_img=None, title=None):
    """Show a ΔMD map in MNI space (diverging colours, symmetric around 0).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D ΔMD = MD(post) − MD(pre) in mm²/s on a template grid (one
        participant, or an arm's mean made beforehand, e.g. with
        ``nilearn.image.mean_img`` over
        :func:`ketamine_nb.voxelwise.delta_md_maps`).
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    display_mode : str, default="ortho"
        nilearn display mode.
    cut_coords : sequence of float, optional
        Cut positions (MNI mm); default: nilearn's choice.
    vmax : float, optional
        Colour range ±vmax in 10⁻³ mm²/s; default: the 99th percentile of
        |ΔMD| over non-zero voxels.
    threshold : float, default=1e-6
        |ΔMD| below this (10⁻³ mm²/s) is transparent; the default hides only
        the zeros outside the brain.
    bg_img : nibabel.Nifti1Image, optional
        Background; default nilearn's MNI152 template.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Blue: MD decreased from pre to post; red: increased.
    """
    from nilearn import plotting

    shown = _scaled(img, MD_SCALE)
    vmax = _symmetric_vmax(np.asarray(shown.dataobj), vmax)
    fig = _new_figure(figure, (10, 4))
    kw = {} if bg_img is None else {"bg_img": bg_img}
    plotting.plot_stat_map(shown, cut_coords=cut_coords, display_mode=display_mode,
                           figure=fig, axes=_BRAIN_RECT, cmap=_DIVERGING, vmin=-vmax,
                           vmax=vmax, symmetric_cbar=True, threshold=threshold,
                           colorbar=False, black_bg=False, draw_cross=False, **kw)
    _colorbar(fig, _CBAR_RECT, _DIVERGING, -vmax, vmax, DELTA_MD_LABEL)
    fig.suptitle(title or "ΔMD, MNI space (blue: decrease, red: increase)", fontsize=11)
    return fig


def plot_glass_stat(stat_img, *, threshold=3.0, figure=None, display_mode: str = "lyrz",
                    vmax=None, stat_label: str = "t statistic", title=None):
    """Show a voxelwise statistic map on a glass brain.

    Parameters
    ----------
    stat_img : nibabel.Nifti1Image
        3D statistic in MNI space (e.g. ``voxelwise_inference(...)["t"]``).
    threshold : float, default=3.0
        |statistic| below this is not shown (the grey band of the colour bar);
        the default matches the voxelwise cluster table's |t| > 3. For a
        −log10 p map use e.g. ``-np.log10(0.05)``.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    display_mode : str, default="lyrz"
        nilearn glass-brain views (left, front, right, top).
    vmax : float, optional
        Colour range ±vmax; default: the largest |statistic|.
    stat_label : str, default="t statistic"
        Colour-bar label (the statistic and its unit).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        nilearn ``plot_glass_brain`` with a labelled colour bar: diverging
        colours, symmetric around 0, for a signed map (t); sequential from 0
        for a map without negative values (−log10 p).
    """
    from nilearn import plotting

    data = np.asarray(stat_img.dataobj, np.float32)
    vmax = float(np.nanmax(np.abs(data))) if vmax is None else float(vmax)
    vmax = max(vmax, threshold * 1.01, 1e-6)
    signed = bool(np.nanmin(data) < 0)  # a t map; a −log10 p map is not
    cmap, vmin = (_DIVERGING, -vmax) if signed else (_SEQUENTIAL, 0.0)
    fig = _new_figure(figure, (11, 3.4))
    import warnings

    with warnings.catch_warnings():  # nothing above threshold is a result, not a problem
        warnings.filterwarnings("ignore", message=".*empty.*", category=UserWarning)
        plotting.plot_glass_brain(stat_img, threshold=threshold, display_mode=display_mode,
                                  figure=fig, axes=_BRAIN_RECT, cmap=cmap, plot_abs=False,
                                  vmin=vmin, vmax=vmax, symmetric_cbar=signed,
                                  colorbar=False)
    cax = _colorbar(fig, _CBAR_RECT, cmap, vmin, vmax, stat_label)
    cax.axhspan(-threshold if signed else 0.0, threshold, color="0.85")
    n = int(np.count_nonzero(np.abs(data) >= threshold))
    voxels = f"{n} voxel{'s' * (n != 1)}"
    fig.suptitle(title or f"{stat_label}, |value| ≥ {threshold:g} shown ({voxels})",
                 fontsize=11)
    return fig


# --------------------------------------------------------------------- tables

def plot_delta_by_arm(roi_deltas: pd.DataFrame, *, ax=None, regions=None):
    """ΔMD per region by arm: every participant (strip) over a box plot.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``participant_id``, ``arm``, ``region``, ``delta_md`` (mm²/s), as in
        ``Results.roi_deltas``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    regions : sequence of str, optional
        Regions and their order; default: all, in table order.

    Returns
    -------
    matplotlib.figure.Figure
        Boxes (median, quartiles, whiskers at 1.5 IQR, no fliers: every
        point is drawn) and points in the arm colours, in 10⁻³ mm²/s, with a
        zero line (no change).
    """
    import warnings

    import seaborn as sns
    from matplotlib import MatplotlibDeprecationWarning
    from matplotlib.lines import Line2D

    d = roi_deltas.dropna(subset=["delta_md"])
    regions = list(pd.unique(d["region"])) if regions is None else list(regions)
    d = d[d["region"].isin(regions)].assign(delta=lambda t: t["delta_md"] * MD_SCALE)
    arms = _arm_order(d["arm"])
    palette = {a: _arm_color(a) for a in arms}
    fig, ax = _axes(ax, (max(6.0, 1.2 * len(regions) + 1.5), 4.2))
    common = {"data": d, "x": "region", "y": "delta", "hue": "arm", "order": regions,
              "hue_order": arms, "palette": palette, "ax": ax, "legend": False}
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated vert=
        warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
        sns.boxplot(**common, showfliers=False, fill=False, width=0.7, linewidth=1.2)
    sns.stripplot(**common, dodge=True, jitter=0.18, size=3.2, alpha=0.65)
    ax.axhline(0, color="0.4", lw=0.8, ls="--", zorder=0)
    n = d.drop_duplicates("participant_id").groupby("arm")["participant_id"].size()
    ax.legend(handles=[Line2D([], [], ls="", marker="o", color=palette[a],
                              label=f"{a} (n = {n.get(a, 0)})") for a in arms],
              fontsize=8, loc="best")
    ax.set(xlabel="region", ylabel=DELTA_MD_LABEL, title="ΔMD by arm and region")
    ax.tick_params(axis="x", labelsize=8, labelrotation=20 if len(regions) > 5 else 0)
    return fig


def _ols_band(x, y, n_points=50):
    """Least-squares line and its pointwise 95 % confidence band, for drawing."""
    from scipy.stats import t as t_dist

    n = len(x)
    slope, intercept = np.polyfit(x, y, 1)
    xs = np.linspace(x.min(), x.max(), n_points)
    fit = intercept + slope * xs
    if n < 3:  # a line through two points has no band
        return xs, fit, fit, fit
    resid = y - (intercept + slope * x)
    s = np.sqrt(resid @ resid / (n - 2))
    sxx = ((x - x.mean()) ** 2).sum()
    half = t_dist.ppf(0.975, n - 2) * s * np.sqrt(1 / n + (xs - x.mean()) ** 2 / sxx)
    return xs, fit, fit - half, fit + half


def _stats_row(stats_roi, region, outcome):
    if stats_roi is None:
        return None
    if isinstance(stats_roi, pd.Series):
        return stats_roi
    sel = stats_roi[(stats_roi["region"] == region) & (stats_roi["outcome"] == outcome)]
    return sel.iloc[0] if len(sel) else None


def _fmt_p(p) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def plot_scatter(stats_input: pd.DataFrame, region: str, outcome: str, *, ax=None,
                 stats_roi=None, change_label=None):
    """ΔMD against Δscore in one region, per arm, with least-squares lines.

    Parameters
    ----------
    stats_input : pandas.DataFrame
        The rows the models saw (``Results.stats_input``): ``arm``,
        ``region``, ``outcome``, ``delta_md`` (mm²/s), ``delta_score``.
    region, outcome : str
        Which model (e.g. ``"BA10_L"``, ``"madrs"``).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    stats_roi : pandas.DataFrame or pandas.Series, optional
        ``Results.stats_roi`` (the row of ``region``/``outcome`` is used) or
        that row: the legend then gives each arm's Pearson r with its 95 % CI
        and the title the interaction's p and q.
    change_label : str, optional
        y-axis label; default ``"ΔMADRS = post − pre (points; < 0 = better)"``
        (pass one when the stats used percent change).

    Returns
    -------
    matplotlib.figure.Figure
        Points and, per arm, the least-squares line of Δscore on ΔMD with its
        95 % confidence band (from 3 points on). The line is fitted here for
        drawing only and is not adjusted for the baseline score; the model's
        numbers come from ``stats_roi``.
    """
    from .stats import OUTCOMES

    rows = stats_input[(stats_input["region"] == region) & (stats_input["outcome"] == outcome)]
    if rows.empty:
        raise InputError(f"no rows for region {region!r} and outcome {outcome!r} in "
                         "stats_input")
    row = _stats_row(stats_roi, region, outcome)
    fig, ax = _axes(ax, (5.8, 4.6))
    ax.axhline(0, color="0.6", lw=0.7, ls=":", gid="zero")
    ax.axvline(0, color="0.6", lw=0.7, ls=":", gid="zero")
    for arm in _arm_order(rows["arm"]):
        g = rows[rows["arm"] == arm]
        x, y = g["delta_md"].to_numpy(float) * MD_SCALE, g["delta_score"].to_numpy(float)
        colour, label = _arm_color(arm), f"{arm} (n = {len(g)})"
        if row is not None and np.isfinite(row.get(f"r_{arm}", np.nan)):
            label += (f", r = {row[f'r_{arm}']:.2f} [{row[f'r_{arm}_ci_low']:.2f}, "
                      f"{row[f'r_{arm}_ci_high']:.2f}]")
        ax.scatter(x, y, s=20, color=colour, alpha=0.75, edgecolor="white", linewidth=0.4,
                   label=label, gid=f"points:{arm}")
        if len(g) >= 2 and np.ptp(x) > 0:
            xs, fit, lo, hi = _ols_band(x, y)
            if len(g) >= 3:
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)
            ax.plot(xs, fit, color=colour, lw=2, gid=f"fit:{arm}")
    name = OUTCOMES.get(outcome, {}).get("label", outcome)
    ax.set(xlabel=DELTA_MD_LABEL,
           ylabel=change_label or f"Δ{name} = post − pre (points; < 0 = better)")
    title = f"{region}: Δ{name} vs ΔMD"
    if row is not None and "p_interaction" in row:
        q = row.get("q_fdr", row.get("q_holm", np.nan))
        title += f"\narm × ΔMD interaction p = {_fmt_p(row['p_interaction'])}, q = {_fmt_p(q)}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best",
              title="Pearson r [95 % CI]" if row is not None else None, title_fontsize=8)
    return fig


def _q_column(table):
    for c in ("q_fdr", "q_holm"):
        if c in table:
            return c
    raise InputError("the stats table has no q_fdr or q_holm column; pass the table "
                     "ketamine_nb.stats.region_stats (or Results.stats_roi) returns")


def plot_forest(stats_roi: pd.DataFrame, *, outcome: str = "madrs", ax=None,
                alpha: float = 0.05, xlabel=None):
    """Forest plot of the arm × ΔMD interaction across regions.

    Parameters
    ----------
    stats_roi : pandas.DataFrame
        ``Results.stats_roi``: ``region``, ``outcome``, ``beta_interaction``,
        ``se_interaction`` and ``q_fdr`` (or ``q_holm``).
    outcome : str, default="madrs"
        Outcome whose rows are shown.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    alpha : float, default=0.05
        q below which a region is marked (filled diamond and a star).
    xlabel : str, optional
        x-axis label; default: the estimate's unit with the default stats
        (score points per 10⁻⁶ mm²/s of ΔMD).

    Returns
    -------
    matplotlib.figure.Figure
        One row per region, top to bottom in table order: the estimate (the
        ketamine slope minus the saline slope) ± 1.96 SE, its q on the right,
        and a zero line (no arm difference).
    """
    from matplotlib.lines import Line2D

    from .stats import OUTCOMES

    t = stats_roi[stats_roi["outcome"] == outcome].reset_index(drop=True)
    if t.empty:
        raise InputError(f"no rows for outcome {outcome!r}; outcomes in the table: "
                         f"{', '.join(pd.unique(stats_roi['outcome']))}")
    qcol = _q_column(t)
    y = np.arange(len(t))
    # A model with fewer than 3 participants in an arm has no estimate (NaN or no column).
    est, se = t.reindex(columns=["beta_interaction", "se_interaction"]).to_numpy(float).T
    half = _Z95 * se
    sig = (t[qcol] < alpha).to_numpy()
    fig, ax = _axes(ax, (6.4, 0.45 * len(t) + 1.6))
    ax.axvline(0, color="0.4", lw=0.8, ls="--")
    ax.errorbar(est, y, xerr=half, fmt="none", ecolor="0.25", elinewidth=1.3, capsize=3)
    ax.scatter(est[sig], y[sig], marker="D", s=42, color="0.1", zorder=3, gid="significant")
    ax.scatter(est[~sig], y[~sig], marker="D", s=42, facecolor="white", edgecolor="0.1",
               zorder=3, gid="not significant")
    tr = ax.get_yaxis_transform()
    for yi, q, s, e in zip(y, t[qcol], sig, est, strict=True):
        text = f"q = {_fmt_p(q)}{' *' if s else ''}" if np.isfinite(e) else "not estimated"
        ax.text(1.02, yi, text, transform=tr, va="center", fontsize=8,
                fontweight="bold" if s else "normal")
    ax.set_yticks(y, t["region"])
    ax.set_ylim(len(t) - 0.5, -0.5)
    corr = "FDR" if qcol == "q_fdr" else "Holm"
    ax.legend(handles=[
        Line2D([], [], ls="", marker="D", color="0.1", label=f"{corr} q < {alpha:g} (*)"),
        Line2D([], [], ls="", marker="D", mfc="white", mec="0.1", label=f"q ≥ {alpha:g}")],
        fontsize=8, loc="lower right")
    name = OUTCOMES.get(outcome, {}).get("label", outcome)
    ax.set_xlabel(xlabel or f"ketamine − saline slope, ± 1.96 SE\n"
                            f"({name} points per 10⁻⁶ mm²/s of ΔMD)")
    ax.set_title(f"Arm × ΔMD interaction on Δ{name}", fontsize=10)
    return fig


def _choice(value):
    """One choice value, comparable whether it came from memory or a TSV."""
    if value is None or value in ("", "none", "n/a") or (
            isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _choice_label(choice, value) -> str:
    if choice == "csf_md_threshold":
        return "CSF guard: none" if value is None else \
            f"CSF guard: MD ≤ {value * MD_SCALE:g}×10⁻³ mm²/s"
    if choice == "probability_threshold":
        return f"atlas probability ≥ {value:g}"
    names = {"fit_method": "fit", "outcome": "outcome", "change": "score change",
             "covariates": "covariates"}
    return f"{names.get(choice, choice)}: {'none' if value is None else value}"


def _spec_matrix(ax, used, levels, x):
    """Dot matrix: one row per choice value, a dot where a specification used it."""
    for r, (c, v) in enumerate(levels):
        on = np.array([u == v for u in used[c]])
        ax.scatter(x[on], np.full(on.sum(), r), s=5, marker="s", color="0.15", gid=f"{c}={v}")
        if r and c != levels[r - 1][0]:
            ax.axhline(r - 0.5, color="0.8", lw=0.6)
    ax.set_yticks(range(len(levels)), [_choice_label(c, v) for c, v in levels], fontsize=8)
    ax.set_ylim(len(levels) - 0.5, -0.5)
    ax.set_xlabel("specification (sorted by estimate)")


def plot_robustness(robustness_table: pd.DataFrame, region: str, *, figure=None,
                    alpha: float = 0.05, highlight=None, estimate: str = "beta"):
    """Specification curve of one region: sorted estimates over the choices behind them.

    Parameters
    ----------
    robustness_table : pandas.DataFrame
        ``Results.robustness`` (:func:`ketamine_nb.robustness.robustness_grid`):
        one row per specification × region.
    region : str
        Region shown.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    alpha : float, default=0.05
        Uncorrected p below which an estimate is drawn dark.
    highlight : dict, optional
        Choices of one specification to mark in orange (e.g. the pipeline's
        defaults, ``{"fit_method": "configured", "probability_threshold": 0.25,
        "csf_md_threshold": 1.1e-3, "outcome": "madrs", "change": "absolute",
        "covariates": "none"}``).
    estimate : {"beta", "t"}, default="beta"
        ``"beta"``: the interaction ± 1.96 SE, in Δscore per 10⁻⁶ mm²/s;
        ``"t"``: beta / SE ± 1.96, comparable across outcomes and change
        definitions.

    Returns
    -------
    matplotlib.figure.Figure
        Top: the estimates sorted from lowest to highest with their 95 %
        intervals. Bottom: one row per choice value, a dot where the
        specification above used it (Simonsohn, Simmons & Nelson 2020).

    Notes
    -----
    With ``estimate="beta"``, specifications of different outcomes (MADRS
    0-60, QIDS-SR 0-27) or of percent change are on different scales, so
    sorting them together ranks units as much as effects: a warning says so.
    Filter the table (e.g. ``table[table.change == "absolute"]``) or use
    ``estimate="t"``.
    """
    import warnings

    if estimate not in ("beta", "t"):
        raise InputError(f"estimate {estimate!r} is unknown; use 'beta' or 't'")
    t = robustness_table[robustness_table["region"] == region].copy()
    if t.empty:
        raise InputError(f"no specifications for region {region!r}")
    scales = t[[c for c in ("outcome", "change") if c in t]].drop_duplicates()
    if estimate == "beta" and len(scales) > 1:
        warnings.warn("the specifications mix outcomes or change definitions, whose "
                      "estimates are on different scales; filter the table or pass "
                      "estimate='t'", UserWarning, stacklevel=2)
    se = t["se_interaction"].to_numpy(float)
    t["_y"] = t["beta_interaction"] / (se if estimate == "t" else 1.0)
    t["_half"] = _Z95 * (1.0 if estimate == "t" else se)
    choices = [c for c in _ROBUSTNESS_CHOICES if c in t]
    # Rows of the dot matrix in grid order (the table's specification order).
    levels = [(c, v) for c in choices for v in dict.fromkeys(_choice(u) for u in t[c])]
    t = t.sort_values("_y", kind="stable", na_position="last").reset_index(drop=True)
    used = {c: [_choice(v) for v in t[c]] for c in choices}
    n_rows = len(levels)
    fig = _new_figure(figure, (10, 3.2 + 0.2 * n_rows))
    fig.set_layout_engine("constrained")
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw={"height_ratios": [1.4, 0.1 + 0.1 * n_rows]})
    x, y, half = np.arange(len(t)), t["_y"].to_numpy(float), t["_half"].to_numpy(float)
    colours = np.where((t["p_interaction"] < alpha).to_numpy(), "0.1", "0.65")
    if highlight:
        on = np.logical_and.reduce([np.array([u == _choice(v) for u in used[c]])
                                    for c, v in highlight.items()])
        for a in (top, bottom):
            for xi in x[on]:
                a.axvline(xi, color="#E69F00", lw=2, alpha=0.8, zorder=0, gid="highlight")
    top.vlines(x, y - half, y + half, colors=colours, lw=0.8)
    top.scatter(x, y, c=colours, s=9, zorder=3, gid="estimates")
    top.axhline(0, color="0.3", lw=0.8, ls="--")
    top.set_ylabel("arm × ΔMD interaction ± 1.96 SE\n(Δscore per 10⁻⁶ mm²/s)"
                   if estimate == "beta" else "interaction t = estimate / SE\n± 1.96 (unitless)")
    top.set_title(f"{region}: {len(t)} specifications; dark: p < {alpha:g} (uncorrected)"
                  + ("; orange: highlighted" if highlight else ""), fontsize=10)
    _spec_matrix(bottom, used, levels, x)
    return fig


def plot_truth_vs_measured(roi_deltas: pd.DataFrame, ground_truth: pd.DataFrame, *, ax=None,
                           truth: str = "apparent"):
    """Measured ΔMD against the ΔMD planted in the simulated cohort.

    Parameters
    ----------
    roi_deltas : pandas.DataFrame
        ``Results.roi_deltas`` (``participant_id``, ``region``, ``arm``,
        ``delta_md`` in mm²/s).
    ground_truth : pandas.DataFrame
        ``Results.ground_truth`` (``ground_truth_roi.tsv`` of the simulation).
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    truth : {"apparent", "tissue"}, default="apparent"
        ``"apparent"``: the truth's ``delta_md``, what a perfect measurement
        with the pipeline's CSF guard reports; ``"tissue"``: the CSF-free
        tissue change (``tissue_md_post − tissue_md_pre``).

    Returns
    -------
    matplotlib.figure.Figure
        One point per participant × region in the arm colours, the identity
        line, and Pearson r in the title.
    """
    if truth not in ("apparent", "tissue"):
        raise InputError(f"truth {truth!r} is unknown; use 'apparent' or 'tissue'")
    gt = ground_truth.copy()
    gt["truth"] = gt["delta_md"] if truth == "apparent" else \
        gt["tissue_md_post"] - gt["tissue_md_pre"]
    d = roi_deltas[["participant_id", "arm", "region", "delta_md"]].merge(
        gt[["participant_id", "region", "truth"]], on=["participant_id", "region"])
    d = d.dropna(subset=["delta_md", "truth"])
    if len(d) < 2:
        raise InputError("fewer than two participant × region rows match the ground truth")
    x, y = d["truth"].to_numpy(float) * MD_SCALE, d["delta_md"].to_numpy(float) * MD_SCALE
    fig, ax = _axes(ax, (5.0, 4.8))
    lim = np.array([min(x.min(), y.min()), max(x.max(), y.max())])
    lim += np.array([-1, 1]) * 0.05 * np.ptp(lim)
    ax.plot(lim, lim, color="0.4", lw=0.9, ls="--", label="identity", gid="identity")
    for arm in _arm_order(d["arm"]):
        sel = (d["arm"] == arm).to_numpy()
        n_p = d.loc[sel, "participant_id"].nunique()
        ax.scatter(x[sel], y[sel], s=12, alpha=0.6, color=_arm_color(arm), edgecolor="none",
                   label=f"{arm} ({n_p} participants)", gid=f"points:{arm}")
    r = np.corrcoef(x, y)[0, 1]
    which = "planted" if truth == "apparent" else "planted tissue"
    ax.set(xlim=lim, ylim=lim, aspect="equal",
           xlabel=f"{which} ΔMD (10⁻³ mm²/s)", ylabel="measured ΔMD (10⁻³ mm²/s)",
           title=f"Measured vs {which} ΔMD, all regions\nr = {r:.3f}, "
                 f"n = {len(d)} participant × region")
    ax.legend(fontsize=8, loc="upper left")
    return fig
