"""The base of every typed configuration section (pydantic): unknown keys are refused, types are checked
strictly (no "1" for an int, no `true` for a float), assignments are checked too, and each field's
docstring is its description (`offline_chunk config --explain`).

The sections live next to what they configure: the agents' in their files (agents/*.py), the policies' in
policies/*.py, the critics' in nets/critic.py, the run's in config.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_assignment=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )
