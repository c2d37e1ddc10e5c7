"""Detector-gap masks: artificial gaps for training, real detector layouts, user-given gaps.

Every mask is a bool array that is True where a voxel is MISSING. In a BCDI volume the axes
are (z, y, x) = (rocking angle, detector rows, detector columns), so a detector gap is a plane
(or band) constant along z. For training, Masto et al. [1]_ cut a plane ("line") or two
perpendicular planes ("cross") of width 3, 6, 9 or 12 voxels out of 32^3 portions.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayproc.errors import InputError
from rayproc.options import look_up_option

GAP_KINDS = ("line", "cross")
AXIS_NAMES = ("z", "y", "x")

# Module pitch (rows, columns) and the gap after each module, in pixels.
_DETECTOR_LAYOUTS = {
    # Maxipix 2x2: four 255-px chip areas around a 6-px cross (516 x 516 frame).
    "maxipix": ((255, 255), (6, 6)),
    # Eiger2 X 4M-like: 512 x 1028 modules, 38-px bands between rows, 12-px between columns.
    "eiger": ((512, 1028), (38, 12)),
}


@dataclass(frozen=True)
class GapSpec:
    """An artificial gap in a portion: one plane ("line") or two perpendicular planes ("cross").

    Parameters
    ----------
    kind : {"line", "cross"}
        One plane, or two planes of the same width perpendicular to two different axes.
    axis : int
        Axis the (first) plane is perpendicular to.
    width : int
        Plane thickness in voxels.
    position : int
        First missing index of the (first) plane along ``axis``.
    cross_axis, cross_position : int or None
        Axis and first missing index of the second plane; set for a cross only.
    """

    kind: str
    axis: int
    width: int
    position: int
    cross_axis: int | None = None
    cross_position: int | None = None

    def __post_init__(self):
        look_up_option(self.kind, GAP_KINDS, name="gap kind")
        if self.width < 1 or self.axis < 0 or self.position < 0:
            raise InputError(f"gap width must be >= 1, axis and position >= 0; got {self}.")
        is_cross = self.kind == "cross"
        has_second = self.cross_axis is not None and self.cross_position is not None
        if is_cross != has_second or (
            is_cross
            and (self.cross_axis == self.axis or min(self.cross_axis, self.cross_position) < 0)
        ):
            raise InputError(
                "a cross needs a cross_axis other than axis and a cross_position >= 0, a line "
                f"neither; got {self}."
            )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "axis": self.axis,
            "width": self.width,
            "position": self.position,
            "cross_axis": self.cross_axis,
            "cross_position": self.cross_position,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GapSpec":
        return cls(
            d["kind"],
            int(d["axis"]),
            int(d["width"]),
            int(d["position"]),
            d.get("cross_axis"),
            d.get("cross_position"),
        )


def random_gap(
    rng,
    size: int = 32,
    *,
    widths=(3, 6, 9, 12),
    kinds=GAP_KINDS,
    centred: bool = False,
    ndim: int = 3,
) -> GapSpec:
    """Draw an artificial gap for a cubic portion of edge ``size``, as in [1]_.

    Parameters
    ----------
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    size : int, optional
        Edge length of the portion.
    widths : sequence of int, optional
        Gap widths to choose from (uniformly).
    kinds : sequence of {"line", "cross"}, optional
        Gap kinds to choose from (uniformly).
    centred : bool, optional
        Put every plane in the middle of the portion (``position = (size - width) // 2``)
        instead of anywhere it fits wholly.
    ndim : int, optional
        Rank of the portion (2 or more for a cross).

    Returns
    -------
    GapSpec
        The gap; the plane axes are drawn uniformly (two distinct ones for a cross).
    """
    rng = np.random.default_rng(rng)
    kind = look_up_option(str(rng.choice(list(kinds))), GAP_KINDS, name="gap kind")
    width = int(rng.choice(list(widths)))
    if not 1 <= width <= size:
        raise InputError(f"gap width must be in [1, {size}]; got {width} instead.")

    def place() -> int:
        return (size - width) // 2 if centred else int(rng.integers(0, size - width + 1))

    axes = rng.permutation(ndim)
    if kind == "line":
        return GapSpec(kind, int(axes[0]), width, place())
    if ndim < 2:
        raise InputError(f"a cross needs a portion of rank >= 2; got ndim={ndim} instead.")
    return GapSpec(kind, int(axes[0]), width, place(), int(axes[1]), place())


def gap_mask(spec: GapSpec, shape) -> np.ndarray:
    """Rasterise a :class:`GapSpec` into a missing-voxel mask.

    Parameters
    ----------
    spec : GapSpec
        The gap.
    shape : tuple of int
        Shape of the portion.

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
        True on the missing voxels: ``width * size^2`` of them for a line in a cube, and
        ``2 width size^2 - width^2 size`` for a cross.

    Raises
    ------
    InputError
        If a plane does not lie wholly inside ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    planes = [(spec.axis, spec.position)]
    if spec.kind == "cross":
        planes.append((spec.cross_axis, spec.cross_position))
    mask = np.zeros(shape, dtype=bool)
    for axis, start in planes:
        _fill_band(mask, axis, start, spec.width, what=spec)
    return mask


def _fill_band(mask: np.ndarray, axis: int, start: int, width: int, *, what) -> None:
    """Set ``mask`` True on indices [start, start + width) along ``axis``; raise if outside."""
    if not (0 <= axis < mask.ndim and start >= 0 and start + width <= mask.shape[axis]):
        raise InputError(f"gap {what} falls outside the volume of shape {mask.shape}.")
    index = [slice(None)] * mask.ndim
    index[axis] = slice(start, start + width)
    mask[tuple(index)] = True


def detector_gap_mask(layout: str, shape, *, roi_origin=(0, 0)) -> np.ndarray:
    """Missing-pixel mask of a real detector layout, as planes along the detector axes.

    Parameters
    ----------
    layout : {"maxipix", "eiger"}
        ``"maxipix"``: a 6-px cross between the four 255-px chip areas of a 2x2 Maxipix
        (516 x 516 frame). ``"eiger"``: an Eiger2-like tiling of 512 x 1028-px modules with
        38-px bands between module rows and 12-px bands between module columns.
    shape : tuple of int
        ``(y, x)`` of detector frames or ``(z, y, x)`` of a stack of frames (rocking curve).
    roi_origin : tuple of int, optional
        Detector pixel ``(y, x)`` of the volume's first row and column, for a volume cropped
        out of the full frame.

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
        True on gap pixels; constant along z.
    """
    layout = look_up_option(layout, _DETECTOR_LAYOUTS, name="detector layout")
    module, gap = _DETECTOR_LAYOUTS[layout]
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or len(roi_origin) != 2:
        raise InputError(
            f"expected a (y, x) or (z, y, x) shape and a (y, x) roi_origin; got {shape} and "
            f"{tuple(roi_origin)} instead."
        )
    in_gap = [
        (np.arange(n) + origin) % (m + g) >= m
        for n, origin, m, g in zip(shape[-2:], roi_origin, module, gap)
    ]
    frame = in_gap[0][:, None] | in_gap[1][None, :]
    return np.broadcast_to(frame, shape).copy()


def frame_mask_volume(frame_mask, shape, *, offset=(0, 0)) -> np.ndarray:
    """A detector's 2D missing-pixel mask as the mask of a (cropped) rocking scan.

    A BCDI rocking scan is a stack of detector frames, so a pixel missing on the detector
    (module gap, dead or hot pixel) is missing in every frame: the scan's mask is the detector
    mask cropped to the scan's region and repeated along the rocking axis z.

    Parameters
    ----------
    frame_mask : array_like, shape (H, W)
        Detector mask, nonzero (or True) on missing pixels.
    shape : tuple of int
        ``(z, y, x)`` of the scan.
    offset : tuple of int, optional
        Detector pixel ``(row, column)`` of the scan's first ``y`` and ``x`` (a scan cropped
        from the detector at rows ``row..row+y``, columns ``column..column+x``).

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
        True where a voxel is missing; constant along z.

    Raises
    ------
    InputError
        If the mask is not 2D, or the scan's region does not lie inside it.

    Examples
    --------
    >>> detector = np.zeros((6, 6), bool)
    >>> detector[:, 3] = True                   # a one-pixel gap column
    >>> mask = frame_mask_volume(detector, (2, 3, 3), offset=(1, 2))
    >>> mask.shape, bool(mask[:, :, 1].all()), int(mask.sum())
    ((2, 3, 3), True, 6)
    """
    frame_mask = np.asarray(frame_mask)
    shape, offset = tuple(int(s) for s in shape), tuple(int(o) for o in offset)
    if frame_mask.ndim != 2 or len(shape) != 3 or len(offset) != 2:
        raise InputError(f"expected a 2D detector mask, a (z, y, x) scan shape and a (row, column) offset; "
                         f"got mask shape {frame_mask.shape}, scan shape {shape} and offset {offset} instead.")
    (row, column), (_, height, width) = offset, shape
    if row < 0 or column < 0 or row + height > frame_mask.shape[0] or column + width > frame_mask.shape[1]:
        raise InputError(f"a scan of {height} x {width} pixels at detector offset ({row}, {column}) does not fit "
                         f"the {frame_mask.shape[0]} x {frame_mask.shape[1]} detector mask; check --mask-offset.")
    frame = frame_mask[row:row + height, column:column + width] != 0
    return np.broadcast_to(frame, shape).copy()


def parse_gap(text: str) -> tuple[str, int, int]:
    """Parse a user-given gap ``"AXIS:START:WIDTH"``, e.g. ``"x:126:6"``.

    Parameters
    ----------
    text : str
        AXIS is ``z``, ``y`` or ``x``; START is the first missing index; WIDTH >= 1.

    Returns
    -------
    axis : str
        ``"z"``, ``"y"`` or ``"x"``.
    start, width : int

    Examples
    --------
    >>> parse_gap("x:126:6")
    ('x', 126, 6)
    """
    parts = str(text).strip().split(":")
    try:
        axis, start, width = parts[0].strip().lower(), int(parts[1]), int(parts[2])
        if len(parts) != 3 or axis not in AXIS_NAMES or start < 0 or width < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise InputError(
            f"expected a gap as AXIS:START:WIDTH with AXIS in z, y, x, START >= 0 and WIDTH >= 1 "
            f"(e.g. 'x:126:6'); got {text!r} instead."
        ) from None
    return axis, start, width


def gaps_to_mask(gaps, shape) -> np.ndarray:
    """Missing-voxel mask for user-given gaps.

    Parameters
    ----------
    gaps : iterable of str or (axis, start, width)
        Gaps as ``"AXIS:START:WIDTH"`` strings (see :func:`parse_gap`) or parsed tuples.
    shape : tuple of int
        ``(z, y, x)`` or ``(y, x)`` (then AXIS ``z`` is refused).

    Returns
    -------
    mask : ndarray of bool, shape ``shape``
        True on the missing voxels (the union of the gaps).

    Raises
    ------
    InputError
        If a gap is malformed or falls outside the volume.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise InputError(f"expected a (z, y, x) or (y, x) shape; got {shape} instead.")
    names = AXIS_NAMES[-len(shape):]
    mask = np.zeros(shape, dtype=bool)
    for gap in gaps:
        axis, start, width = parse_gap(gap) if isinstance(gap, str) else gap
        if axis not in names:
            raise InputError(
                f"gap {gap!r} is along {axis!r}; a volume of shape {shape} has axes {names}."
            )
        _fill_band(mask, names.index(axis), int(start), int(width), what=repr(gap))
    return mask


__all__ = [
    "AXIS_NAMES",
    "GAP_KINDS",
    "GapSpec",
    "detector_gap_mask",
    "frame_mask_volume",
    "gap_mask",
    "gaps_to_mask",
    "parse_gap",
    "random_gap",
]
