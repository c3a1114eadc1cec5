"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class AlexnetError(Exception):
    """Base class: the message is complete and meant for the user."""


class DataError(AlexnetError):
    """A data file or folder is missing or unusable. The message names the path and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ConfigError(AlexnetError):
    """An unknown name or an option out of range."""


class CheckpointError(AlexnetError):
    """A checkpoint that cannot be read or does not fit."""


class TrainingDiverged(AlexnetError):
    """The loss became NaN or stayed at chance; the last checkpoint is kept."""


class Interrupted(AlexnetError):
    """SIGINT or SIGTERM stopped the work; the message says what was saved."""
