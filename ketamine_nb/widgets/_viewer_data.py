"""What the 3D viewer shows: maps on the template grid, in display units, sent compactly.

Plain functions and a small cache, no widgets: every map comes from a package
function (:func:`ketamine_nb.registration.load_template`,
:func:`ketamine_nb.voxelwise.mean_delta_md_map`,
:func:`ketamine_nb.voxelwise.interaction_t_map`,
:func:`ketamine_nb.regions.regions_on_grid`, ...); here they are only put in
display units and encoded as small gzipped NIfTI files for NiiVue.
"""

from __future__ import annotations

import gzip
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..derivatives import MNI_MAP_RESOLUTION, session_paths
from ..exceptions import InputError
from ..plotting import DELTA_MD_SCALE, MD_SCALE

#: The maps the viewer offers (control values), in menu order.
MAPS = ("template", "md", "fa", "mean_delta_md", "t")
#: Menu labels of :data:`MAPS`.
MAP_LABELS = {"template": "MNI152 template", "md": "participant MD", "fa": "participant FA",
              "mean_delta_md": "mean ΔMD (post − pre)", "t": "t map (Δscore × arm)"}
#: Units of each map as shown (the threshold's unit too).
MAP_UNITS = {"template": "a.u.", "md": "10⁻³ mm²/s", "fa": "FA (0-1)",
             "mean_delta_md": "10⁻⁶ mm²/s", "t": "t"}
#: Maps drawn in colour over the template (the others are the grey background).
STAT_MAPS = ("mean_delta_md", "t")
#: Largest gzipped NIfTI the viewer sends for one map (bytes).
MAX_PAYLOAD_BYTES = 5_000_000
#: Maps kept in memory (and their volumes in the browser).
MAP_CACHE_SIZE = 8


@dataclass
class ViewerMap:
    """One map on the viewer's grid, in display units.

    Attributes
    ----------
    key : tuple
        What it is: ``(map, participant, session, arm, outcome)`` with the
        parts that do not apply set to ``None``.
    name : str
        A short label (also the NIfTI name NiiVue shows).
    data : numpy.ndarray
        3D float32 on the grid, in :data:`MAP_UNITS` of its map.
    unit : str
        The unit.
    overlay : bool
        Drawn in colour over the template (statistical maps) rather than as
        the grey background.
    cal_max : float
        Top of the colour scale: the 99.5th percentile of the nonzero
        absolute values.
    threshold : float
        The threshold shown first (``cal_min``).
    """

    key: tuple
    name: str
    data: np.ndarray
    unit: str
    overlay: bool
    cal_max: float
    threshold: float


def encode_nifti(data, affine, *, dtype="int16") -> bytes:
    """Encode a 3D/4D array as a small gzipped NIfTI (what NiiVue reads).

    Continuous maps are stored as ``int16`` with the scale factor and
    intercept nibabel chooses (``scl_slope``, ``scl_inter``, which NiiVue and
    nibabel apply): 65536 levels between the smallest and the largest value.
    Labels and percentages are stored as ``uint8`` (``dtype="uint8"``,
    rounded, no scaling).

    Returns
    -------
    bytes
        The ``.nii.gz`` file.
    """
    import nibabel as nib

    data = np.nan_to_num(np.asarray(data, np.float32))
    if dtype == "uint8":
        img = nib.Nifti1Image(np.clip(np.rint(data), 0, 255).astype(np.uint8),
                              np.asarray(affine, float))
    else:
        img = nib.Nifti1Image(data, np.asarray(affine, float))
        img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    bio = io.BytesIO()
    img.to_file_map(img.make_file_map({"image": bio, "header": bio}))
    return gzip.compress(bio.getvalue(), compresslevel=6, mtime=0)


def decode_nifti(payload: bytes) -> np.ndarray:
    """Decode :func:`encode_nifti`'s bytes back to values (float32)."""
    import nibabel as nib

    raw = gzip.decompress(payload)
    img = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(img.get_fdata(), np.float32)


def _robust_max(data) -> float:
    v = np.abs(data[np.isfinite(data) & (data != 0)])
    return float(np.percentile(v, 99.5)) if v.size else 1.0


def _on_grid(img, grid):
    if img.shape[:3] == grid.shape[:3] and np.allclose(img.affine, grid.affine, atol=1e-3):
        return np.asarray(img.dataobj, np.float32)
    from nilearn.image import resample_to_img

    out = resample_to_img(img, grid, interpolation="linear", force_resample=True,
                          copy_header=True)
    return np.asarray(out.dataobj, np.float32)


class ViewerData:
    """The grid, the region maps on it and the maps of a :class:`Results`, cached.

    Parameters
    ----------
    results : ketamine_nb.results.Results
        Pipeline results (the ``md_mni`` maps of ``results.out_dir`` give the
        participant MD, the cohort's mean ΔMD and the t map).
    regions : sequence of str, optional
        Regions drawn (default: the results' regions that have atlas maps).
    resolution : float, default=MNI_MAP_RESOLUTION
        Voxel size of the grid (mm): the template grid of the ``md_mni`` maps.
    """

    def __init__(self, results, *, regions=None, resolution: float = MNI_MAP_RESOLUTION):
        from ..regions import GLOBAL_GM, load_region_maps, regions_on_grid
        from ..registration import load_template

        self.results = results
        self.grid = load_template(resolution)
        wanted = [r for r in (regions or results.regions) if r != GLOBAL_GM]
        try:
            maps = load_region_maps(wanted)
        except InputError:
            known = load_region_maps().names
            maps = load_region_maps([r for r in wanted if r in known])
        self.regions = list(maps.names)
        self.probability, self.labels = regions_on_grid(
            maps, self.grid, probability_threshold=float(
                results.config.get("probability_threshold") or 0.25))
        self._maps: OrderedDict = OrderedDict()
        self._centres: dict = {}

    @property
    def affine(self) -> np.ndarray:
        """The grid's affine (voxel to MNI mm)."""
        return self.grid.affine

    # -- what is available --------------------------------------------------

    def md_path(self, participant_id: str, session: str) -> Path:
        """Path of a session's MD map on the template grid."""
        return session_paths(self.results.out_dir, participant_id, session)["md_mni"]

    def participants(self) -> list:
        """Participants with a template-space MD map of some session."""
        s = self.results.sessions
        return [p for p in dict.fromkeys(s["participant_id"])
                if any(self.md_path(p, ses).exists()
                       for ses in s.loc[s["participant_id"] == p, "session"])]

    def arm_ids(self, arm: str) -> list:
        """Participants of one arm (``"both"``: all)."""
        parts = self.results.participants
        if parts is None or "arm" not in parts:
            raise InputError(f"{self.results.out_dir}: no participants.tsv with an 'arm' "
                             "column; rerun 'ketamine-nb run'")
        ids = parts if arm == "both" else parts[parts["arm"] == arm]
        return list(ids["participant_id"])

    # -- maps ----------------------------------------------------------------

    def get(self, map_name: str, *, participant_id=None, session=None, arm="both",
            outcome="madrs") -> ViewerMap:
        """Return one map (made once, then kept; :data:`MAP_CACHE_SIZE` at most)."""
        if map_name not in MAPS:
            raise InputError(f"map must be one of {', '.join(MAPS)}, not {map_name!r}")
        key = (map_name, participant_id if map_name in ("md", "fa") else None,
               session if map_name in ("md", "fa") else None,
               arm if map_name == "mean_delta_md" else None,
               outcome if map_name == "t" else None)
        if key not in self._maps:
            self._maps[key] = self._make(key)
            while len(self._maps) > MAP_CACHE_SIZE:
                self._maps.popitem(last=False)
        self._maps.move_to_end(key)
        return self._maps[key]

    def _make(self, key) -> ViewerMap:
        map_name, pid, ses, arm, outcome = key
        res = self.results
        if map_name == "template":
            data, name = np.asarray(self.grid.dataobj, np.float32), "MNI152 template"
        elif map_name == "md":
            p = self.md_path(pid, ses)
            if not p.exists():
                raise InputError(f"{p}: not found; rerun 'ketamine-nb run' for {pid} "
                                 f"ses-{ses}")
            import nibabel as nib

            data, name = _on_grid(nib.load(p), self.grid) * MD_SCALE, f"{pid} ses-{ses} MD"
        elif map_name == "fa":
            from ..registration import apply_transform

            try:
                fa, xfm = res.image(pid, ses, "fa"), res.transform(pid, ses)
            except (KeyError, OSError) as err:
                raise InputError(f"{pid} ses-{ses}: no FA map or transform to the template "
                                 f"({err}); rerun 'ketamine-nb run'") from None
            data = np.asarray(apply_transform(fa, xfm, target=self.grid,
                                              direction="to_mni").dataobj, np.float32)
            name = f"{pid} ses-{ses} FA"
        elif map_name == "mean_delta_md":
            from ..voxelwise import mean_delta_md_map

            img = mean_delta_md_map(res.out_dir, self.arm_ids(arm))
            data = _on_grid(img, self.grid) * DELTA_MD_SCALE
            name = f"mean ΔMD ({arm})"
        else:
            if res.scores is None:
                raise InputError(f"{res.out_dir}: no scores.tsv; the t map needs scores")
            from ..voxelwise import interaction_t_map

            f = (Path(res.out_dir) / "voxelwise" /
                 f"outcome-{outcome}_contrast-interaction_stat-t_statmap.nii.gz")
            if f.is_file():
                import nibabel as nib

                img = nib.load(f)
            else:
                img = interaction_t_map(res.out_dir, res.scores, outcome=outcome)
            data, name = _on_grid(img, self.grid), f"t ({outcome}, Δscore × arm)"
        top = _robust_max(data)
        if map_name == "t":
            thr = min(2.0, 0.5 * top)
        elif map_name == "mean_delta_md":
            thr = 0.25 * top
        else:
            thr = 0.0
        return ViewerMap(key=key, name=name, data=data.astype(np.float32),
                         unit=MAP_UNITS[map_name], overlay=map_name in STAT_MAPS,
                         cal_max=top, threshold=float(thr))

    # -- positions ------------------------------------------------------------

    def voxel(self, xyz_mm) -> tuple | None:
        """Grid voxel nearest a world position (None outside the grid)."""
        ijk = np.rint(np.linalg.solve(self.affine, [*map(float, xyz_mm[:3]), 1.0]))[:3]
        ijk = ijk.astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(self.grid.shape[:3])):
            return None
        return tuple(int(v) for v in ijk)

    def centre_frac(self, region: str) -> list:
        """Where to put the crosshair for a region (NiiVue's fractions of the grid).

        The region's voxel (labelled as it) nearest its probability-weighted
        centre (:func:`ketamine_nb.plotting.slices.region_centre`), so that the
        crosshair lands inside the region even when the region is curved.
        """
        from ..plotting.slices import region_centre

        if region not in self._centres:
            k = self.regions.index(region)
            prob = np.asarray(self.probability.dataobj[..., k], np.float32)
            inside = np.argwhere(np.asarray(self.labels.dataobj) == k + 1)
            if not len(inside):
                inside = np.argwhere(prob > 0)
            if not len(inside):
                inside = np.array([np.asarray(prob.shape) // 2])
            c = region_centre(inside, prob[tuple(inside.T)] + 1e-6)
            best = inside[np.argmin(((inside - c) ** 2).sum(axis=1))]
            self._centres[region] = [float(v) for v in (best + 0.5) / np.asarray(prob.shape)]
        return self._centres[region]

    def describe_position(self, xyz_mm, shown: ViewerMap) -> dict:
        """Position, region and value of the shown map at a world position."""
        from ..regions import region_at

        ijk = self.voxel(xyz_mm)
        value = float(shown.data[ijk]) if ijk is not None else float("nan")
        return {"x_mm": float(xyz_mm[0]), "y_mm": float(xyz_mm[1]), "z_mm": float(xyz_mm[2]),
                "voxel": ijk, "region": region_at(self.labels, self.regions, xyz_mm),
                "value": value, "unit": shown.unit, "map": shown.name}
