"""Speed, FLOP, parameter and memory benchmarks of the bridges beside their installed reference implementations.

Entry point: ``python -m benchmarks.run`` (``make bench``); cases in :mod:`benchmarks.bridges`, measurement in
:mod:`benchmarks.measure`. See ``benchmarks/README.md``.
"""
