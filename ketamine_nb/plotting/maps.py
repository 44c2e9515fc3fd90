"""Brain images: raw DWI, gradients, MD/FA maps, registration, ΔMD and statistic maps.

Every function draws into a new figure, or into the ``ax=``/``figure=`` it is
given, and returns the :class:`matplotlib.figure.Figure`; none calls
``plt.show()``. MD in 10⁻³ mm²/s, ΔMD in 10⁻⁶ mm²/s, units on every
colour bar.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._base import (
    _BRAIN_RECT,
    _BRAIN_RECT_LEGEND,
    _CBAR_RECT,
    _DIVERGING,
    _SEQUENTIAL,
    DELTA_MD_LABEL,
    DELTA_MD_SCALE,
    MD_LABEL,
    MD_SCALE,
    _colorbar,
    _new_figure,
    _region_styles,
    _root_figure,
    _scaled,
)

__all__ = [
    "plot_delta_md_map",
    "plot_dwi_slices",
    "plot_framewise_displacement",
    "plot_glass_stat",
    "plot_gradients",
    "plot_md_difference",
    "plot_md_map",
    "plot_registration",
    "plot_session_qc",
]


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


def plot_framewise_displacement(motion, truth=None, *, threshold=None, figure=None,
                                title: str = ""):
    """Framewise displacement of every volume, estimated and (simulated) true.

    Parameters
    ----------
    motion : pandas.DataFrame
        The realignment's table (:func:`ketamine_nb.motion.realign_series`):
        ``volume`` and ``fd`` (mm); volumes with ``excluded`` true are marked.
    truth : pandas.DataFrame, optional
        The simulator's per-volume truth
        (:meth:`ketamine_nb.results.Results.true_motion`): ``volume`` and
        ``framewise_displacement_mm`` (mm).
    threshold : float, optional
        The outlier threshold (mm) drawn as a dashed line; default
        :data:`ketamine_nb.motion.FD_THRESHOLD_MM`, ``False`` for none.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first); a new one if omitted.
    title : str, default=""
        Title of the axes.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from ..motion import FD_THRESHOLD_MM

    for col in ("volume", "fd"):
        if col not in motion:
            raise InputError(f"the motion table has no {col!r} column; give the table "
                             "realign_series returns")
    fig = _new_figure(figure, (6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(motion["volume"], motion["fd"], "o-", color="#0072B2",
            label="estimated by the realignment")
    if truth is not None:
        ax.plot(truth["volume"], truth["framewise_displacement_mm"], "x:", color="#E69F00",
                label="true (simulator)")
    if "excluded" in motion and motion["excluded"].any():
        out = motion[motion["excluded"].astype(bool)]
        ax.plot(out["volume"], out["fd"], "s", mfc="none", mec="#D55E00", ms=11, mew=1.5,
                label="left out of the fit")
    threshold = FD_THRESHOLD_MM if threshold is None else threshold
    if threshold is not False:
        ax.axhline(threshold, color="#D55E00", ls="--", label="outlier threshold")
    ax.set_xlabel("volume")
    ax.set_ylabel("framewise displacement (mm)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
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

    from ..regions import DEFAULT_PROBABILITY_THRESHOLD

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

    from ..registration import apply_transform, load_template

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
                      vmax=None, threshold=1e-3, bg_img=None, title=None):
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
        Colour range ±vmax in 10⁻⁶ mm²/s; default: the 99th percentile of
        |ΔMD| over non-zero voxels.
    threshold : float, default=1e-3
        |ΔMD| below this (10⁻⁶ mm²/s) is transparent; the default hides only
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

    shown = _scaled(img, DELTA_MD_SCALE)
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




def plot_md_difference(difference_img, reference_md, *, display_mode: str = "x",
                       cut_coords=None, vmax=None, threshold: float = 0.5, figure=None,
                       title=None):
    """Show where an MD map differs from a reference, in percent, over the reference.

    Parameters
    ----------
    difference_img : nibabel.Nifti1Image
        The percent difference 100 × (MD − MD_reference) / MD_reference, as
        :func:`ketamine_nb.teaching.md_percent_difference` returns it.
    reference_md : nibabel.Nifti1Image
        The reference MD map (mm²/s), drawn underneath.
    display_mode : str, default="x"
        nilearn display mode (``"x"``: sagittal views, where a damaged axial
        slice shows as a horizontal line).
    cut_coords : sequence of float, optional
        Cut positions (world mm); default: nilearn's choice.
    vmax : float, optional
        Colour range ±vmax (%); default: the 99th percentile of |difference|
        over the voxels that differ.
    threshold : float, default=0.5
        Differences smaller than this (%, either sign) are not coloured.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The difference in diverging colours (red: higher than the reference).
    """
    from nilearn import plotting

    d = np.abs(np.asarray(difference_img.dataobj))
    if vmax is None:
        vmax = float(np.percentile(d[d > 0], 99)) if np.any(d > 0) else 1.0
    fig = _new_figure(figure, (10, 4))
    plotting.plot_stat_map(difference_img, bg_img=reference_md, display_mode=display_mode,
                           cut_coords=cut_coords, figure=fig, axes=_BRAIN_RECT,
                           cmap=_DIVERGING, vmin=-vmax, vmax=vmax, symmetric_cbar=True,
                           threshold=threshold, colorbar=False, black_bg=True,
                           draw_cross=False)
    _colorbar(fig, _CBAR_RECT, _DIVERGING, -vmax, vmax, "MD difference (% of the reference)")
    fig.suptitle(title or "MD difference from the reference (% of the reference)", fontsize=11)
    return fig
