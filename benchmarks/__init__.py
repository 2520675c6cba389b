"""Benchmarks of sparseflows against a reference FFJORD code path: ``python -m benchmarks.run``
(see ``benchmarks/README.md``)."""
