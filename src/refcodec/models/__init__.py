"""Models: the shared coding interface, the baselines, GRM, the registry of presets and shipped weights."""
