"""Errors that mean "the user gave us something we cannot use".

The CLI turns an :class:`InputError` into a one-line message and exit code 2; anything else is a
bug in mlsec and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: wrong shapes, labels out of range, a module that does not import, ...

    The message says what was wrong and how to fix it, in one line, in the library's terms.
    ``subject`` names the argument at fault as the library calls it (``"checkpoint"``,
    ``"eps"``); the message then reads ``"checkpoint: ..."``, and the command line shows its
    own flag instead (``"--checkpoint: ..."``).

    Example:
        >>> error = InputError("the folder holds another audit", subject="checkpoint")
        >>> str(error)
        'checkpoint: the folder holds another audit'
        >>> error.subject, error.detail
        ('checkpoint', 'the folder holds another audit')

    """

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(f"{subject}: {message}" if subject else message)
        self.subject = subject
        self.detail = message

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled whole (subject included), so an error can travel between processes.
        return (_rebuild, (self.detail, self.subject))


class SoundnessError(RuntimeError):
    """A certificate and an attack contradict each other: a bug in mlsec (or in the model's code).

    Raised when a sample certified robust at eps (interval bounds) is broken by an attack within
    eps. The message names the sample, the budget and the attack; the CLI exits 3.
    """


def _rebuild(message: str, subject: str | None) -> InputError:
    return InputError(message, subject=subject)
