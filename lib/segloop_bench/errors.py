"""The one error a harness raises when it cannot run (missing cases, an untrained model)."""


class HarnessError(RuntimeError):
    """Told to the user as a one-line message by ``segloop-bench`` (exit status 2)."""
