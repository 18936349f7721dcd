"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class MlipError(Exception):
    """Base class for every error caused by user input (files, options, structures)."""


class DataError(MlipError, ValueError):
    """A problem with an input structure or data file, naming the file and frame.

    Args:
        message: what is wrong, e.g. "forces contain NaN".
        source: file path (or any description of where the data came from), or None.
        frame: index (or id) of the offending frame in that source, or None.
    """

    def __init__(self, message: str, source=None, frame=None):
        self.problem = message
        self.source = None if source is None else str(source)
        self.frame = frame
        where = []
        if self.source is not None:
            where.append(self.source)
        if frame is not None:
            where.append(f"frame {frame}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
