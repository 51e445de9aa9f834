"""Errors that the command line reports as one clear line, without a traceback.

Every error a user can cause (a bad config key, a malformed data line, a missing model) is a
`TetherError`; anything else is a bug and keeps its traceback.
"""


class TetherError(Exception):
    """Base class: the message is shown to the user as is."""


class ConfigError(TetherError):
    """A config file or override is wrong: names the key and what is expected."""


class DataError(TetherError):
    """A data file is wrong: names the file, the line and what is expected."""


class InvalidRow(DataError):
    """A well-formed row whose content is unusable (empty text, identical replies, a duplicate):
    `data.on_invalid=skip` skips such rows and reports how many."""


class ModelError(TetherError):
    """A model or tokenizer cannot be loaded or does not fit the task."""


class TrainingError(TetherError):
    """Training stopped (NaN loss, divergence): names the step and what was kept."""


class StageFailed(TrainingError):
    """A stage ran but could not do its job (cut short far from its planned steps by a time cap, a model no
    better than chance). What it made is kept for inspection, but the run is not marked finished, so a
    pipeline stops there instead of handing it to the next stage. Says what happened and what to change."""
