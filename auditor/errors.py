"""Errors the command line turns into a one-line message and exit status 2."""


class AuditorError(Exception):
    """Invalid input, rules, configuration or usage. The message is shown to the operator as is."""


class RuleError(AuditorError):
    """A rule file that cannot be loaded: the message names the file, line, rule id and the reason."""


class SourceError(AuditorError):
    """A source that cannot be read at all (missing file, unknown scheme, ...).

    `source` names the configured source it came from (as given in the configuration), when known: the daemon
    counts the failure under it.
    """

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class Cancelled(Exception):
    """Raised inside a scan's stream to stop it (the daemon shutting down); nothing is recorded."""
