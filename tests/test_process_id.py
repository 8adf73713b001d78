"""worker.process_id: the cached process id follows a fork (prometheus-client's multiprocess
values and the scripts' pinned connections rely on it to tell a forked child apart)."""

from __future__ import annotations

import multiprocessing
import os

from worker.process_id import current_pid


def _report(conn):
    conn.send((current_pid(), os.getpid()))
    conn.close()


def test_the_cached_pid_is_this_process():
    assert current_pid() == os.getpid()


def test_a_forked_child_sees_its_own_pid_not_its_parents():
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_report, args=(child_end,))
    child.start()
    cached, real = parent_end.recv()
    child.join(10)
    assert cached == real == child.pid
    assert cached != current_pid()
