"""What the tests and the benches share: slow reference formulations and files with random weights.

Importable from the repository root by both `tests/` and `bench/`; nothing in the project's own code imports it.
"""
