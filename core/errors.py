"""Errors that are the user's to fix. The CLIs print them as one `error:` line and exit 2."""


class UsageError(Exception):
    """A wrong flag, a missing or unusable input: one line that names the thing and the fix."""


class DiskFull(Exception):
    """The disk filled up: one line that says what was kept and how to go on; exit code 1."""


def is_disk_full(error: BaseException) -> bool:
    import errno

    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
