"""The one exception type that means "bad input": the CLI prints it as one line and exits non-zero."""


class GolfError(Exception):
    """A problem the user can fix (bad path, corrupt file, failed check).

    ``exit_code`` lets a check (the size gate) exit with a code of its own.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
