"""What the slice viewer shows: one image (and an overlay), or a session of pipeline results."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..exceptions import InputError
from ..plotting.slices import canonical, ras_indices
from ._controls import SESSION_CACHE_SIZE


def _load_image(img):
    import nibabel as nib

    if isinstance(img, str | Path):
        return nib.load(str(img))
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise InputError("slice_viewer needs a nibabel image, a path to one, or a Results")
    return img


def _remember(store: OrderedDict, key, make):
    if key not in store:
        store[key] = make()
        while len(store) > SESSION_CACHE_SIZE:
            store.popitem(last=False)
    store.move_to_end(key)
    return store[key]


class ImageSource:
    """One image (and an optional overlay on its grid)."""

    def __init__(self, img, overlay, kind):
        img = _load_image(img)
        name = Path(img.get_filename()).name if img.get_filename() else "image"
        if kind is None:
            low = name.lower()
            kind = ("md" if "desc-md_" in low else "fa" if "desc-fa_" in low
                    else "mask" if "mask" in low else "image")
        self.base = (name, *canonical(img)[:2], kind)
        self.overlay = None
        if overlay is not None:
            ov_img = _load_image(overlay)
            if ov_img.shape[:3] != img.shape[:3] or not np.allclose(ov_img.affine, img.affine,
                                                                    atol=1e-3):
                from nilearn.image import resample_to_img

                ov_img = resample_to_img(ov_img, img.slicer[..., 0] if img.ndim == 4 else img,
                                         interpolation="nearest", force_resample=True,
                                         copy_header=True)
            ov = canonical(ov_img)[0]
            self.overlay = ov[..., 0] if ov.ndim == 4 else ov

    def image(self, values):
        return self.base

    def region_overlay(self, values, shape):
        return self.overlay


class ResultsSource:
    """A session's maps of pipeline results; the overlay is a region's atlas probability."""

    def __init__(self, results):
        self.results = results
        self._images: OrderedDict = OrderedDict()
        self._regions: OrderedDict = OrderedDict()

    def image(self, values):
        key = (values["subject"], values["session"], values["kind"])
        return _remember(self._images, key, lambda: (
            f"{key[0]} ses-{key[1]} {key[2]}", *canonical(self.results.image(*key))[:2],
            key[2]))

    def region_overlay(self, values, shape):
        reg = values["region"]
        if reg == "none" or values["kind"] == "md_mni":
            return None
        pid, ses = values["subject"], values["session"]

        def make():
            from nibabel.orientations import io_orientation

            md_img = self.results.image(pid, ses, "md")
            v = self.results.session_voxels(pid, ses)
            v = v[v["region"].astype(str) == reg]
            ijk = ras_indices(v[["i", "j", "k"]].to_numpy(), md_img.shape[:3],
                              io_orientation(md_img.affine))
            vol = np.zeros(shape[:3], np.float32)
            vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = v["probability"].to_numpy()
            return vol
        return _remember(self._regions, (pid, ses, reg), make)
