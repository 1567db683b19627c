"""A crashed pytest-xdist worker must fail its test and let the run end (session 41).

The harness's CI of session 40 never ended: a worker died at ~45 % (a segmentation fault)
and, with `--dist loadfile` (xdist's `LoadScopeScheduling`), the run then hung until the
90 minutes were spent, with no summary saying which test crashed. pytest-xdist 3.8.0 (the
newest release) has three faults here, reported upstream (pytest-dev/pytest-xdist #1323,
#1327, #1378; fixes in #1324, #1328, #1363, #1371, not released):

- `remove_node` puts back the dead worker's whole workload, the files it had finished
  too; handed out later they send a worker an empty list of tests, which it never
  answers, so no worker is given more work and every one waits for ever;
- the test the worker died in goes back with its file: the replacement runs it again and
  dies again, until the restarts are spent;
- a replacement given one file of one test waits for a second test (a worker runs a test
  only once it knows the next one) that is never sent.

`mend()` changes those three and nothing else: finished files are dropped, the crashed
test counts as done (xdist has reported it failed, "worker 'gw0' crashed while running
…"), and a worker is given files until it holds more than two tests or none are left —
never a replacement still collecting, nor over a dead worker's channel (review41 found
both when two workers crashed close together: a file lost, an INTERNALERROR).
tests/test_xdist_crash.py runs a real pytest over a crashing test to check the run ends.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler.loadscope import LoadScopeScheduling

_MENDED = "_tillpoint_mended"


def mend() -> None:
    if getattr(LoadScopeScheduling, _MENDED, False):
        return

    def remove_node(self: Any, node: Any) -> str | None:
        workload: dict[str, dict[str, bool]] = self.assigned_work.pop(node)
        pending = [test for unit in workload.values() for test, done in unit.items() if not done]
        if not pending:
            return None  # a worker shut down with its work done
        crashed = pending[0]  # tests run in the order given (xdist's own reading)
        for unit in workload.values():
            if crashed in unit:
                unit[crashed] = True  # not run again: xdist reports it failed
        self.workqueue.update(
            (scope, unit) for scope, unit in workload.items() if not all(unit.values())
        )
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed

    def reschedule(self: Any, node: Any) -> None:
        if node.shutting_down or node not in self.registered_collections:
            # a replacement still collecting (two workers crashed close together) gets
            # its work at its own `schedule()`; given it now, xdist's `_assign_work_unit`
            # failed on its missing collection with the file taken off the queue, and the
            # KeyError was swallowed: the file's tests never run nor reported (review41)
            return
        if not self.workqueue:
            node.shutdown()
            return
        # 2: xdist's own heuristic; a worker holding one test waits for the next
        while self.workqueue and self._pending_of(self.assigned_work[node]) <= 2:
            try:
                self._assign_work_unit(node)
            except OSError:  # a worker dead before its `errordown` was handled: the
                return  # file is recorded as its work, which `remove_node` puts back

    LoadScopeScheduling.remove_node = remove_node  # type: ignore[method-assign]
    LoadScopeScheduling._reschedule = reschedule  # type: ignore[method-assign]
    setattr(LoadScopeScheduling, _MENDED, True)
