"""Private CPU plumbing for :mod:`multibox.core`: compiled (Numba) loops, index selection,
integer ranges and chunked row sums. Only ``core`` imports these; their speed evidence is in
``docs/benchmarks.md``."""
