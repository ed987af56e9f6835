"""The one exception type users see: a one-line, actionable message, printed without a traceback."""


class MedtuneError(Exception):
    """A problem with the user's input (config, data, paths) that the user can fix.

    The CLI prints ``error: <message>`` and exits non-zero. Messages name the file, line and field
    where there is one, e.g. ``data/train.jsonl:17: field "output" missing (format alpaca)``.
    """


def where(path, line=None) -> str:
    """Return ``path`` or ``path:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def did_you_mean(name: str, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``" (choose from a, b, …)"``."""
    import difflib

    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choose from {', '.join(choices)})"
