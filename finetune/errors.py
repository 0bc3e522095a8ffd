"""The one base class for what a user can fix: bad data, a bad config, a missing file or backend choice.

Its message says what is wrong, where, and what to do; every entry point prints it as `error: ...` and exits 2,
with no traceback. A ValueError, so code that caught the older errors as ValueError keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input the user can correct; the message names the field, record or file, and the fix."""
