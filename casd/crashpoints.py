"""A test hook, and nothing else: ``CASD_TEST_CRASH_AT=<point>`` makes a casd process kill
itself with SIGKILL when it reaches the named point of a multi-step change, so that tests can
check what a crash exactly there leaves behind. Unset (always, outside tests), it costs one
comparison per call.

Points: ``publish-before-commit`` (a blob's bytes are in place, a file or an S3 object, its row
not yet committed), ``publish-before-settle`` (the row is committed, the publication journal
not yet removed), ``segment-before-record`` (a resumable upload's segment is durable, not yet
recorded),
``upload-before-publish`` (an upload's recorded segments are assembled, not yet published) and
``upload-before-segments-deleted`` (the upload is complete, its segments not yet removed).
"""

from __future__ import annotations

import os
import signal

_TARGET = os.environ.get("CASD_TEST_CRASH_AT") or None


def reached(point: str) -> None:
    """Die here, at once and without cleaning up, if the test hook names this point."""
    if point == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
