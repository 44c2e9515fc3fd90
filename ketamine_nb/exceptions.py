"""The errors and warnings ketamine-nb raises on purpose.

One public home for them, as in ``sklearn.exceptions``: catch
:class:`KetamineNBError` to handle anything the package reports about its
input, and filter :class:`StudyWarning` to silence notes about a dataset.
"""

from __future__ import annotations

__all__ = ["InputError", "KetamineNBError", "StudyWarning"]


class KetamineNBError(Exception):
    """Base class of the errors this package raises on purpose.

    The message is one line that names the file or subject, the problem and
    the fix. The command line prints it without a traceback (``--debug``
    shows one) and exits with :attr:`exit_code`.
    """

    exit_code = 2


class InputError(KetamineNBError, ValueError):
    """An input file, table or argument cannot be used as it is."""


class StudyWarning(UserWarning):
    """Something in the dataset could not be used; the rest was loaded.

    The message is one line: the file or participant, the problem and the
    fix. The same lines are kept in :attr:`ketamine_nb.study.Study.problems`.
    """
