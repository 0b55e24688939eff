"""The experiments that reproduce and extend the papers tadiffeq is built on.

Each module is a script run from the repository root as `python -m experiments.<name>`
(e.g. `python -m experiments.main`); each exposes `main(argv)` and the functions and
config dataclasses it is built from, for other scripts and the tests.
"""
