"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class NereproError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(NereproError, ValueError):
    """A run setting that cannot work (bad alpha, batch size, network...)."""


class DataError(NereproError):
    """A dataset that is missing, corrupt or too small."""


class ResultsError(NereproError):
    """A results directory or record that cannot be used."""
