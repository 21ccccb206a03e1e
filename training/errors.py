"""The one-line refusals and warnings of training and prediction.

House rule: bad input is refused in one line naming the flag, file or record and what to do next, with
exit status 2 and no traceback. Torch's own errors run over many lines, hence :func:`first_line`. The
lines start with the command that was run (:data:`PROG`: ``training.train``, or ``lcrypt train``).
"""

from __future__ import annotations

import sys

PROG = ["training.train"]  # the command's name in error and warning lines; training.train.run sets it


class TrainError(Exception):
    """A refusal printed as one line (``training.train: error: ...``), exit status 2.

    ``all_ranks``: every rank reaches it alike (arguments, dataset, checkpoint, the run folder's lock,
    checks the ranks agreed on), so only rank 0 prints it; otherwise only the rank that hit it knows it.
    """

    def __init__(self, message: str, all_ranks: bool = True):
        super().__init__(message)
        self.all_ranks, self.reported = all_ranks, False

    def report(self, rank: int) -> None:
        """Print the one line (once, and on rank 0 only when every rank has the same error)."""
        if not self.reported and (rank == 0 or not self.all_ranks):
            print(f"{PROG[0]}: error: {self}", file=sys.stderr, flush=True)
        self.reported = True


def warn(message: str) -> None:
    """One warning line on stderr: the run goes on."""
    print(f"{PROG[0]}: warning: {message}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    """An exception's first line (torch's load and state-dict errors run over many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
