"""Anatomy a teacher shows first: the colour-FA map and the atlas's regions.

Colour FA (direction-encoded colour, DEC; Pajevic & Pierpaoli 1999): each
voxel's colour is the absolute principal eigenvector of its diffusion tensor
weighted by FA, red = left-right, green = anterior-posterior, blue =
superior-inferior. The study regions are the probability maps of
:func:`ketamine_nb.regions.load_region_maps`, drawn in the region palette on
the MNI template.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import InputError
from ._base import _new_figure, _region_styles

__all__ = ["colour_fa", "plot_atlas_maps", "plot_colour_fa"]

#: Colours of the orientation key, pure RGB as in the DEC map itself.
_AXIS_KEY = (("left-right", "#FF0000"), ("anterior-posterior", "#00FF00"),
             ("superior-inferior", "#3366FF"))


def colour_fa(dwi_img, gtab, *, mask_img=None, fit_method: str = "WLS", select=None):
    """Direction-encoded colour FA of a DWI series, as an RGB image on a RAS grid.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI.
    gtab : dipy.core.gradients.GradientTable
        Its gradients; b-vectors in the voxel axes of the image (FSL and BIDS
        convention).
    mask_img : nibabel.Nifti1Image, optional
        Brain mask on the DWI grid; black outside it. Default: every voxel.
    fit_method : str, default="WLS"
        dipy's tensor fit method (the pipeline's default,
        :data:`ketamine_nb.tensor.DEFAULT_FIT_METHOD`).
    select : numpy.ndarray of bool, optional
        Voxels to fit (on the DWI grid), e.g. only the slices to be shown;
        black elsewhere. Default: the mask.

    Returns
    -------
    nibabel.Nifti1Image
        float32, shape (X, Y, Z, 3), in the closest RAS orientation of the
        DWI (``nibabel.as_closest_canonical``): channel 0 (red) is
        |V1 · left-right| × FA, 1 (green) anterior-posterior, 2 (blue)
        superior-inferior, 0-1.

    Notes
    -----
    ``rgb = |e1| × FA`` (dipy's ``color_fa``), with ``e1`` the tensor's
    principal eigenvector. The channels follow the image's voxel axes to the
    nearest world axis (``nibabel.io_orientation``); an oblique acquisition
    mixes the colours by the angle of its tilt.
    """
    import nibabel as nib
    from dipy.reconst.dti import TensorModel, color_fa

    data = np.asarray(dwi_img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise InputError(f"a 4D DWI is needed, got shape {data.shape}")
    mask = np.ones(data.shape[:3], bool) if mask_img is None else \
        np.asarray(mask_img.dataobj) > 0
    if mask.shape != data.shape[:3]:
        raise InputError(f"mask shape {mask.shape} differs from the DWI's {data.shape[:3]}")
    fit_where = mask if select is None else (mask & np.asarray(select, bool))
    rgb = np.zeros((*data.shape[:3], 3), np.float32)
    if fit_where.any():
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), np.errstate(all="ignore"):
            fit = TensorModel(gtab, fit_method=fit_method).fit(data[fit_where])
        fa = np.clip(np.nan_to_num(fit.fa), 0, 1)
        rgb[fit_where] = np.nan_to_num(color_fa(fa, fit.evecs))
    # Voxel axes to RAS: reorder and flip the grid, and give channel k to the world
    # axis each voxel axis lies along (|e1| does not change sign with a flip).
    ornt = nib.io_orientation(dwi_img.affine)
    world = ornt[:, 0].astype(int)
    rgb_world = np.empty_like(rgb)
    rgb_world[..., world] = rgb
    canonical = nib.as_closest_canonical(nib.Nifti1Image(rgb_world, dwi_img.affine))
    return nib.Nifti1Image(np.clip(np.asarray(canonical.dataobj, np.float32), 0, 1),
                           canonical.affine)


def _centre_index(mask):
    if not mask.any():
        return [s // 2 for s in mask.shape]
    return [int(round(np.mean(np.nonzero(mask)[k]))) for k in range(3)]


def plot_colour_fa(dwi_img, gtab, *, mask_img=None, cut_coords=None, figure=None,
                   fit_method: str = "WLS", brightness: float = 1.5, title=None):
    """Colour-FA (direction-encoded colour) map: three orthogonal slices and a key.

    Parameters
    ----------
    dwi_img : nibabel.Nifti1Image
        4D DWI (e.g. ``Results.image(pid, "pre", "dwi")``).
    gtab : dipy.core.gradients.GradientTable
        Its gradients (from :func:`ketamine_nb.dwi.load_dwi`).
    mask_img : nibabel.Nifti1Image, optional
        Brain mask on the DWI grid (``Results.image(pid, ses, "mask")``);
        black outside it. Default: every voxel.
    cut_coords : sequence of 3 int, optional
        Slices in RAS voxel indices (sagittal, coronal, axial); default: the
        centre of the mask. Only these three slices are fitted.
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    fit_method : str, default="WLS"
        dipy's tensor fit method.
    brightness : float, default=1.5
        Display gain: the colours are ``min(1, brightness × |e1| × FA)``, so
        that grey matter (FA 0.1-0.2) is not black; 1 is the plain map.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Sagittal, coronal and axial slices (left of the subject on the left,
        as nilearn shows images) and an orientation key: red = left-right,
        green = anterior-posterior, blue = superior-inferior; brightness = FA.

    Notes
    -----
    On the package's simulated cohort the white-matter directions are a
    smooth random field, not real anatomy: the colours follow no known tract
    there. On a real scan the corpus callosum is red, the corticospinal tract
    blue and the cingulum green. See :func:`colour_fa` for the map. Caption
    and alt text:
    ``ketamine_nb.plotting.ALT_TEXT["plot_colour_fa"]``.
    """
    import nibabel as nib

    mask = np.ones(dwi_img.shape[:3], bool) if mask_img is None else \
        np.asarray(mask_img.dataobj) > 0
    # The slices, in RAS voxel indices, and which native voxels they are.
    ras_mask = np.asarray(nib.as_closest_canonical(
        nib.Nifti1Image(mask.astype(np.uint8), dwi_img.affine)).dataobj) > 0
    cuts = _centre_index(ras_mask) if cut_coords is None else [int(c) for c in cut_coords]
    planes = np.zeros(ras_mask.shape, bool)
    planes[cuts[0]] = planes[:, cuts[1]] = planes[:, :, cuts[2]] = True
    ornt = nib.io_orientation(dwi_img.affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    select = nib.orientations.apply_orientation(planes, back).astype(bool)
    dec = colour_fa(dwi_img, gtab, mask_img=mask_img, fit_method=fit_method, select=select)
    shown = np.clip(np.asarray(dec.dataobj, np.float32) * float(brightness), 0, 1)
    dx, dy, dz = (float(z) for z in dec.header.get_zooms()[:3])
    nx, ny, nz = shown.shape[:3]
    # (name, slice as rows x columns x RGB, width and height in mm, edge letters)
    views = [("sagittal", shown[cuts[0]].transpose(1, 0, 2), ny * dy, nz * dz, "PAIS"),
             ("coronal", shown[:, cuts[1]].transpose(1, 0, 2), nx * dx, nz * dz, "LRIS"),
             ("axial", shown[:, :, cuts[2]].transpose(1, 0, 2), nx * dx, ny * dy, "LRPA")]
    height = max(v[3] for v in views)
    widths = [v[2] / height for v in views]
    fig = _new_figure(figure, (2.9 * sum(widths) + 2.3, 3.9))
    fig.patch.set_facecolor("black")
    key_width = 2.0 / 2.9  # about 2 inches for the key, whatever the panels' shapes
    grid = fig.add_gridspec(1, 4, width_ratios=[*widths, key_width], left=0.01, right=0.99,
                            bottom=0.04, top=0.86, wspace=0.05)
    for k, (name, img, w, h, (left, right, down, up)) in enumerate(views):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img, origin="lower", interpolation="nearest", extent=(0, w, 0, h),
                  gid=f"dec:{name}")
        ax.set_axis_off()
        ax.set_title(f"{name} (slice {cuts[k]})", color="white", fontsize=9)
        kw = {"color": "white", "fontsize": 9, "transform": ax.transAxes,
              "fontweight": "bold"}
        ax.text(0.01, 0.5, left, ha="left", va="center", **kw)
        ax.text(0.99, 0.5, right, ha="right", va="center", **kw)
        ax.text(0.5, 0.01, down, ha="center", va="bottom", **kw)
        ax.text(0.5, 0.99, up, ha="center", va="top", **kw)
    key = fig.add_subplot(grid[0, 3])
    key.set_facecolor("black")
    key.set_axis_off()
    key.set(xlim=(0, 1), ylim=(0, 1))
    key.text(0.5, 0.93, "orientation key", color="white", ha="center", fontsize=9)
    for k, (label, colour) in enumerate(_AXIS_KEY):
        y = 0.74 - 0.22 * k
        key.annotate("", xy=(0.9, y), xytext=(0.1, y),
                     arrowprops={"arrowstyle": "<->", "color": colour, "lw": 2.5})
        key.text(0.5, y - 0.07, label, color=colour, ha="center", va="top", fontsize=8,
                 gid=f"key:{label}")
    key.text(0.5, 0.06, "brightness = FA", color="white", ha="center", fontsize=8)
    fig.suptitle(title or "Colour FA: direction of fastest diffusion × FA", color="white",
                 fontsize=11)
    return fig


def plot_atlas_maps(maps=None, *, figure=None, display_mode: str = "x", cut_coords=None,
                    probability_threshold=None, title=None):
    """Show the study regions' atlas probability maps on the MNI template.

    Parameters
    ----------
    maps : ketamine_nb.regions.RegionMaps, optional
        Default :func:`ketamine_nb.regions.load_region_maps` (the seven study
        regions, Harvard-Oxford, MNI 1 mm).
    figure : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    display_mode : str, default="x"
        nilearn display mode; the default shows sagittal cuts.
    cut_coords : sequence of float, optional
        Cut positions (MNI mm); default for ``"x"``: −26, −4, 4 and 26, through
        the left regions, the midline vACC (on either side of the midline)
        and the right regions.
    probability_threshold : float, optional
        Outline level; default
        :data:`ketamine_nb.regions.DEFAULT_PROBABILITY_THRESHOLD`, the
        pipeline's region definition.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The MNI152 template with each region's probability shaded in its
        palette colour (transparent at 0, opaque at 1) and outlined at the
        threshold (left solid, right dashed); one legend entry per region.

    Notes
    -----
    Caption and alt text: ``ketamine_nb.plotting.ALT_TEXT["plot_atlas_maps"]``.
    """
    from matplotlib.colors import LinearSegmentedColormap, to_rgb
    from matplotlib.lines import Line2D
    from nilearn import plotting

    from ..regions import DEFAULT_PROBABILITY_THRESHOLD, load_region_maps
    from ..registration import load_template
    from .maps import _region_volumes

    maps = load_region_maps() if maps is None else maps
    level = DEFAULT_PROBABILITY_THRESHOLD if probability_threshold is None \
        else float(probability_threshold)
    if cut_coords is None and display_mode == "x":
        cut_coords = (-26, -4, 4, 26)
    vols = _region_volumes(maps.img, maps.names)
    styles = _region_styles(list(maps.names))
    fig = _new_figure(figure, (11, 3.6))
    display = plotting.plot_anat(load_template(1.0), display_mode=display_mode,
                                 cut_coords=cut_coords, figure=fig, axes=(0.0, 0.15, 1.0, 0.75),
                                 black_bg=True, dim=0.3, draw_cross=False, annotate=True,
                                 colorbar=False)
    for name, vol in vols:
        colour, ls = styles[name]
        rgb = to_rgb(colour)
        cmap = LinearSegmentedColormap.from_list(f"p_{name}", [(*rgb, 0.0), (*rgb, 0.85)])
        display.add_overlay(vol, cmap=cmap, vmin=0.0, vmax=1.0, threshold=0.05,
                            colorbar=False)
        display.add_contours(vol, levels=[level], colors=[colour], linewidths=1.3,
                             linestyles=ls)
    handles = [Line2D([], [], color=c, ls=ls, lw=2.2, label=n) for n, (c, ls) in styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=9,
               frameon=False, labelcolor="white",
               title=f"shade: atlas probability 0-1; outline: probability ≥ {level:g}",
               title_fontsize=8)
    fig.legends[-1].get_title().set_color("white")
    fig.patch.set_facecolor("black")
    fig.suptitle(title or "The study's regions: Harvard-Oxford probability maps, MNI space",
                 color="white", fontsize=11)
    return fig
