"""Table 1 metrics, one module each, every definition in its docstring."""
