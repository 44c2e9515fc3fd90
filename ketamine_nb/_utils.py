"""Private helpers: atomic writes, deterministic NIfTI and table output."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "die_with_parent",
    "save_nifti",
    "write_json",
    "write_tsv",
]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A reader never sees a half-written file: the bytes go to a temporary
    file in the same folder, are flushed to disk, and the file is then
    renamed over ``path`` (atomic on POSIX file systems).

    Parameters
    ----------
    path : str or pathlib.Path
        Destination file.
    data : bytes
        The whole content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_nifti(img, path, *, compresslevel: int = 1) -> Path:
    """Save a NIfTI image atomically and byte-reproducibly.

    ``.nii.gz`` files are compressed in memory with a fixed gzip header
    (``mtime=0``, no file name), so that the same image always gives the
    same bytes; the file is then written with :func:`atomic_write_bytes`.
    The compressor is ISA-L (the ``isal`` package, a dependency) when it is
    installed, zlib otherwise: on a simulated DWI series (11 MB of int16)
    ISA-L level 1 takes 0.04 s against zlib level 1's 0.20 s, for a file
    about 2.5 % larger; any gzip reader (nibabel, FSL, MRtrix) opens either.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        The image, with its affine and header.
    path : str or pathlib.Path
        Destination, ending in ``.nii`` or ``.nii.gz``.
    compresslevel : int, default=1
        Compression level: ISA-L's 0-3 (a higher value is taken as 3), or
        zlib's 0-9 without ISA-L. Level 1: noisy MRI data compress barely
        better at higher levels and take several times longer.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        raw = gzip_bytes(raw, compresslevel)
    return atomic_write_bytes(path, raw)


def gzip_bytes(raw: bytes, compresslevel: int = 1) -> bytes:
    """Compress bytes as gzip with a fixed header (``mtime=0``): same input, same bytes.

    ISA-L (the ``isal`` package, a dependency; levels 0-3, a higher level is
    taken as 3) when installed, zlib (levels 0-9) otherwise. Any gzip reader
    opens either.
    """
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency
        return gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    return igzip.compress(raw, compresslevel=min(compresslevel, 3), mtime=0)


def write_tsv(df, path, *, float_format: str = "%.10g") -> Path:
    """Write a table as a BIDS TSV (tab-separated, ``n/a`` for missing), atomically.

    Parameters
    ----------
    df : pandas.DataFrame
        The table; its index is not written.
    path : str or pathlib.Path
        Destination.
    float_format : str, default="%.10g"
        Format of floating-point numbers: ten significant digits are
        enough for MD in mm²/s and keep files byte-stable across runs.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = df.to_csv(sep="\t", index=False, na_rep="n/a", float_format=float_format,
                     lineterminator="\n")
    return atomic_write_text(path, text)


def write_json(obj, path) -> Path:
    """Write ``obj`` as indented JSON (sorted keys), atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def die_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: end this process when its parent ends.

    A pool's worker outlives a parent that was killed (``kill -9``, the
    out-of-memory killer, a Jupyter kernel restarted): it would hold its
    memory (a few hundred MB each) until it finished the work it had, or
    forever if it waits for more. On Linux the kernel sends it SIGTERM when the
    parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and should the
    parent have died before this ran, a daemon thread checks the parent's
    pid every two seconds.

    Parameters
    ----------
    parent_pid : int
        ``os.getpid()`` of the process that creates the pool.
    """
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):                   # no prctl: the thread does it
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def without_grid_edge(mask):
    """Return a copy of a 3D mask without the grid's outermost layer of voxels (bool).

    Where a field of view cuts through the brain (a slab, or the bottom of a
    simulated head) the mask ends in a flat face at the grid's edge. That face
    lies at the same scanner position in every series, whatever the head did,
    so a registration that sees it is pulled towards the scanner's frame
    instead of the anatomy; registrations use the mask without it.
    """
    import numpy as np

    m = np.array(mask, dtype=bool, copy=True)
    m[[0, -1]] = False
    m[:, [0, -1]] = False
    m[:, :, [0, -1]] = False
    return m


def mutual_information(nbins: int = 32, sampling_proportion: float | None = None):
    """Return dipy's dense mutual-information metric, or the sampled one of this module.

    ``sampling_proportion=None``: every voxel of the static grid (dipy's
    ``MutualInformationMetric``); otherwise :func:`sampled_mutual_information`
    (pass the mask as ``static_mask`` to ``optimize``).
    """
    if sampling_proportion is None:
        from dipy.align.imaffine import MutualInformationMetric

        return MutualInformationMetric(nbins=nbins)
    return sampled_mutual_information(nbins, sampling_proportion)


#: Seed of the sample of :func:`sampled_mutual_information` (fixed: reproducible).
_SAMPLE_SEED = 1234


def sampled_mutual_information(nbins: int = 32, sampling_proportion: float = 0.25):
    """Return dipy's sampled mutual-information metric on a random sample kept in a mask.

    dipy's ``MutualInformationMetric`` either uses every voxel of the static
    grid (dense; the masks then restrict the joint histogram, but the image
    gradient is still computed over the whole grid) or a regular sample of
    the grid, and then ignores the masks with a warning. Its regular sample
    is every k-th voxel in index order (k = ceil(1 / p)): where the number of
    slices is a multiple of k, every point falls on one slice in k, and a
    slab's coarse pyramid level is then sampled on two slices of eight (a
    real 64 mm slab registered to itself, ``philips-slab``, came out 0.47 mm
    and 0.3 degrees off with it).

    The metric returned here keeps dipy's design (one point in k, jittered by
    a Gaussian of 0.25 voxel SD against the grid-alignment artefact of mutual
    information) but takes the point at random within each run of k
    consecutive voxels (a fixed seed, :data:`_SAMPLE_SEED`, so reproducible),
    so no slice is skipped, and keeps the points whose nearest voxel lies
    inside ``static_mask``. A registration can then be both sampled and
    masked: it sees neither the background's noise floor nor the cost of the
    grid around the brain. ``AffineRegistration`` passes each pyramid level's
    mask (resampled by nearest neighbour) to :meth:`setup`. A moving mask is
    not supported (dipy's dense path drops moving voxels outside it from the
    histogram); passing one raises.

    A sample's metric is noisy: an image registered to itself ends near, not
    at, the identity (the real slab above: 0.004-0.32 mm at most over the
    brain for 8 seeds of the sample), and the realignment's link of
    ``bench_realign``'s series was 0.13-0.24 mm from the truth at the median
    over 6 seeds. On 24 realistic simulated participants the sampled
    post-to-pre registration was as close to the truth as the dense one on
    average and closer at worst (:data:`ketamine_nb.longitudinal.LONGITUDINAL_PARAMS`).

    Parameters
    ----------
    nbins : int
        Bins of the joint histogram per image.
    sampling_proportion : float
        Share of the static grid's voxels sampled (0 < p < 1; one in
        k = ceil(1 / p), e.g. a quarter for 0.3, as dipy).

    Returns
    -------
    dipy.align.imaffine.MutualInformationMetric
        A metric for ``AffineRegistration``; pass the mask as ``static_mask``
        to ``optimize``.
    """
    import numpy as np
    from dipy.align.imaffine import MutualInformationMetric

    if not 0 < sampling_proportion < 1:
        raise ValueError(f"sampling_proportion must be in (0, 1), got {sampling_proportion}")

    class _MaskedSampledMI(MutualInformationMetric):
        def setup(self, transform, static, moving, static_grid2world=None,
                  moving_grid2world=None, starting_affine=None, static_mask=None,
                  moving_mask=None):
            if moving_mask is not None:
                raise ValueError("sampled_mutual_information: a moving mask is not supported; "
                                 "mask the static image's side (static_mask)")
            super().setup(transform, static, moving, static_grid2world=static_grid2world,
                          moving_grid2world=moving_grid2world, starting_affine=starting_affine,
                          static_mask=None, moving_mask=None)
            shape = np.array(static.shape)
            rng = np.random.default_rng(_SAMPLE_SEED)
            # One voxel at random in each run of k consecutive voxels (index order).
            k = int(np.ceil(1.0 / self.sampling_proportion))
            n = int(np.prod(shape))
            flat = np.arange(0, n, k) + rng.integers(0, k, -(-n // k))
            vox = np.column_stack(np.unravel_index(flat[flat < n], tuple(shape))).astype(float)
            vox += rng.normal(0.0, 0.25, vox.shape)
            vox = np.clip(vox, 0, shape - 1)
            if static_mask is not None:
                vox = vox[np.asarray(static_mask)[tuple(np.rint(vox).astype(int).T)] > 0]
            if not len(vox):
                raise ValueError("no sample point of the registration lies inside the mask")
            grid2world = self.static_grid2world
            world = vox @ grid2world[:-1, :-1].T + grid2world[:-1, -1]
            self.samples = np.ascontiguousarray(np.hstack([world, np.ones((len(vox), 1))]))
            self.samples_prealigned = self.samples if self.starting_affine is None else \
                np.ascontiguousarray(self.starting_affine.dot(self.samples.T).T)
            vals, _ = self.interp_method(self.static, np.ascontiguousarray(vox))
            self.static_vals = np.asarray(vals, dtype=np.float64)
            self.ns = len(vox)
            if static_mask is not None:
                # The histogram's intensity range from the masked voxels, as on
                # dipy's dense path.
                self.histogram.setup(self.static, self.moving,
                                     smask=np.asarray(static_mask, np.int32), mmask=None)

    return _MaskedSampledMI(nbins=nbins, sampling_proportion=sampling_proportion)
