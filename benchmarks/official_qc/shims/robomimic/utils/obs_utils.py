def initialize_obs_modality_mapping_from_dict(mapping):  # called at import; unused for OGBench
    pass
