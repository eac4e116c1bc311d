"""Side-by-side benchmarks of our clients against the official ones (``python -m bench``).

See :mod:`bench.harness` for what a run does; ``bench/ours_driver.py`` and
``bench/official_driver.py`` hold each side's client wiring, ``bench/_driver_common.py`` the
workloads and measurement they share.
"""
