"""Exceptions the library raises for input a user can fix.

They live below every other module so that library code (training, studies, benches)
can say "bad input" without importing the CLI; the CLI maps :class:`BadInput` (and our own
``ValueError`` validation) to exit status 2.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Input the user can fix (a bad preset, space file, storage URL, option): exit code 2.

    A ``ValueError`` subclass so that validation code which raises plain ``ValueError``
    and code which raises this are treated alike by every caller.
    """
