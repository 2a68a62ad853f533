"""User-facing errors: each carries one line of text and a documented exit code.

Exit codes (see README): 0 ok, 1 doctor found problems, 2 bad usage or bad
input, 3 not permitted or not supported on this kernel, 70 a bug in kpeek,
141 the reader of stdout went away (`kpeek ps | head -1`).
"""

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_INTERNAL = 70  # a bug in kpeek (sysexits EX_SOFTWARE); one line, never a traceback


class KpeekError(Exception):
    """An error shown to the user as one line; never a traceback."""

    exit_code = EXIT_USAGE


class UsageError(KpeekError):
    """Bad arguments or bad input (exit 2)."""

    exit_code = EXIT_USAGE


class NotPermitted(KpeekError):
    """The kernel refused access (exit 3). Say what would make it work."""

    exit_code = EXIT_UNSUPPORTED


class NotSupported(KpeekError):
    """This kernel or machine lacks a needed feature (exit 3)."""

    exit_code = EXIT_UNSUPPORTED


def os_reason(e: OSError) -> str:
    """An OSError as a short reason: 'Permission denied: /some/path'."""
    return f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
