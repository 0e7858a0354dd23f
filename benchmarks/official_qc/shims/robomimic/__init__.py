"""Import shim: the official QC code imports robomimic at module level; the OGBench runs never call it."""

DATASET_REGISTRY = {}
