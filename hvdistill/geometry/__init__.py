"""Pure geometry (numpy/torch, float64 where it matters): transforms, projection, grids, frustum.

Nothing here knows about datasets or models; everything is tested against known answers and
against nuscenes-devkit. See docs/geometry.md for the conventions (pixel u = column, v = row;
integer pixel coordinates are pixel centres).
"""
