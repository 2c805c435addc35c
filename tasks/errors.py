"""The project's error types: one line each, naming the culprit and what was expected."""


class ModelPressError(Exception):
    """A user-facing problem: bad input, bad config, missing file. Printed as one line."""


class ConfigError(ModelPressError):
    """params.yaml (or an override) is invalid."""


class DataError(ModelPressError):
    """Input data is missing, malformed or inconsistent."""


class ModelError(ModelPressError):
    """A model file is missing, corrupt, or does not fit the data."""


class VariantError(ModelPressError):
    """A compression technique cannot handle this model; the variant is recorded as failed."""
