"""Effort as bytes read (the CPU dial): the planes layout, its cache on disk, its calibration, and the
allocation that turns one effort into a threshold per matrix.

- `layout`: the layout of one matrix and the numpy reference of its kernels (the executable spec of
  `metal/cpu/planes.c`).
- `store`: a model's layout, streamed from its file tensor by tensor into one cached file that later
  runs are memory-mapped from.
- `allocation`: which matrices spend the byte budget of an effort (thresholds per matrix).
- `calibrate`: the forward-only measurements the allocation is built from.
"""
