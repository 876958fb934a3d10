"""The one type of error a user can fix.

Every problem that is the user's to fix (a recipe key, a missing folder, an unreadable checkpoint,
a video collection with nothing usable) raises a subclass of :class:`SiammaeError` whose message is
one line saying what is wrong and where. The ``siammae`` command group and ``python -m
siammae.train`` catch it once and print that line; anything else is a bug and keeps its traceback.
"""


class SiammaeError(Exception):
    """A problem in the user's input; ``str(error)`` is the one line to show them."""
