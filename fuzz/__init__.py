"""Coverage-guided fuzzing (atheris) of every parser that reads what a stranger sends.

Each ``fuzz_<target>.py`` holds a ``check(data)`` that states the target's contract (what
it may raise, what it must return) without importing atheris, so the regression tests in
``tests/test_fuzz_regressions.py`` replay saved inputs through the very same code.
:mod:`fuzz.harness` runs one target under atheris; :mod:`fuzz.run` runs them all.
"""
