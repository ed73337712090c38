"""User-facing errors.

Every problem a user can cause (bad video, bad config, wrong LoRA, NaN loss, full disk) is raised as a
`SetseqError` whose message is one line naming the problem and the fix. The CLI prints it without a
traceback and exits with status 2.
"""

from __future__ import annotations


class SetseqError(Exception):
    """A problem with the user's input or environment, with a one-line message that names the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        msg = problem.rstrip(".")
        if fix:
            msg = f"{msg}. Fix: {fix.rstrip('.')}."
        else:
            msg = msg + "."
        # Keep the message on one line whatever the inputs contained (paths, metadata from files).
        super().__init__(" ".join(msg.split()))
