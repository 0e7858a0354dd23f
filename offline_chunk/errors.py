"""User-facing errors: one line that names the file, the array, the row and the rule broken."""

from __future__ import annotations


class DataError(ValueError):
    """A malformed store or source file. ``str(err)`` is the one line a user sees."""

    def __init__(self, path, rule: str, array: str | None = None, row: int | None = None):
        self.path, self.rule, self.array, self.row = str(path), rule, array, row
        where = [self.path]
        if array is not None:
            where.append(f"array '{array}'")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{': '.join(where)}: {rule}")

    def __reduce__(self):  # rebuild from the fields, so an error raised in a worker process survives pickling
        return type(self), (self.path, self.rule, self.array, self.row)


class ConfigError(ValueError):
    """A config file or key=value override that cannot be used."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or from a newer version."""


class DivergenceError(RuntimeError):
    """Training stopped by the divergence guard (a checkpoint was saved first)."""


class BenchmarkError(RuntimeError):
    """Benchmark runs that failed; the message names their logs."""
