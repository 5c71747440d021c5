"""The emulated device: its memory node, its lifecycle (R1), and its kernels.

States: ``online`` → ``draining`` → ``offline`` → ``online``.  While draining or offline no
new page lands on the device: implicit placements go to the host, migrations to the device
report ``-ENODEV``, and explicit device allocations, pins of device pages and kernel launches
raise :class:`~ccadgpu.errors.DeviceOfflineError` (they do not wait).  Work already running
is fenced: offline waits for it to leave before it moves a page.
"""
from __future__ import annotations

import contextlib
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import DeviceOfflineError, OfflineRefusedError
from .evacuate import EvacuationReport, evacuate, precheck
from .hints import drop_all_duplicates

if TYPE_CHECKING:
    from .launch import LaunchResult
    from .nodes import Node
    from .space import Space

STATES = ("online", "draining", "offline")


class Device:
    """``space.device``: the accelerator of a :class:`~ccadgpu.Space`."""

    def __init__(self, space: "Space", node: "Node"):
        self._space = space
        self.node = node
        self.state = "online"
        self._active = 0          # work items inside running()
        self._runners: dict[int, int] = {}   # thread -> its work items inside running()
        self._inflight_in = 0     # migrations onto the device between isolate and commit
        self._lifecycle = threading.RLock()
        self._reset_callbacks: list[Callable[[EvacuationReport], None]] = []
        self.resets = 0
        self.last_launch: "LaunchResult | None" = None

    @property
    def id(self) -> int:
        return self.node.id

    @property
    def capacity(self) -> int:
        return self.node.capacity

    def accepts_pages(self) -> bool:
        """New pages may land on the device only while it is online."""
        return self.state == "online"

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Fence for device work (kernel launches): raises DeviceOfflineError unless the device
        is online, and an offline waits until every work item inside has left."""
        cond = self._space._cond
        with cond:
            if self.state != "online":
                raise DeviceOfflineError(f"the device is {self.state}: launches are refused "
                                         "until it is online again")
            me = threading.get_ident()
            self._active += 1
            self._runners[me] = self._runners.get(me, 0) + 1
        try:
            yield
        finally:
            with cond:
                self._active -= 1
                self._runners[me] -= 1
                if not self._runners[me]:
                    del self._runners[me]
                cond.notify_all()

    def launch(self, kernel: Callable[..., Any], *args: Any, reads: Any = (), writes: Any = (),
               name: str | None = None) -> "LaunchResult":
        """Run ``kernel(*args)`` (e.g. a Numba ``@njit`` function) on this device, declaring the
        managed arrays it ``reads`` and ``writes`` (``ccadgpu.launch.Indexed(arr, idx)`` for
        indexed access).  Runs inside :meth:`running`; counted, timed (wall and modeled) and
        traced; see :mod:`ccadgpu.launch`."""
        from .launch import launch
        return launch(self._space, kernel, args, reads=reads, writes=writes, name=name)

    def check_explicit_allocation(self) -> None:
        if self.state != "online":
            raise DeviceOfflineError(f"the device is {self.state}: explicit device allocations "
                                     "are refused until it is online again")

    # -- lifecycle ------------------------------------------------------------------------------
    def offline(self, timeout: float | None = None) -> EvacuationReport:
        """Take the device out of service: fence running work, then move every device page to
        the host, each copy verified before its device frame is released.

        Refused *before anything moves* (raising :class:`OfflineRefusedError`, whose
        ``report`` names the pages and arrays, with the device left online) if pinned pages
        are on the device or the host cannot hold every device page, or if it is called
        from work it would wait for (this thread's own launch, its write to device pages, a
        migration: a kernel, a counters subscriber, a migrate listener).  ``timeout`` (seconds)
        bounds the wait for running work and busy pages; on expiry the device goes back online
        with whatever moved already on the host.  Offline of an offline device is a no-op."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        sp = self._space
        cond = sp._cond
        with cond:
            if self._refuse_offline():        # a refused offline steps nothing (as below)
                return EvacuationReport()
            # (freed ones waiting for the manager too: the evacuation drops their pages, so
            # the open host epoch that touched them must be stepped first, as free() does)
            resident = [a for a in sp._allocs.values() if not a.released and
                        (sp.pt.node[a.vstart:a.vstart + a.npages] == self.node.id).any()]
        sp._settle_ahead(resident)
        with self._lifecycle:
            t0 = time.perf_counter()
            deadline = None if timeout is None else t0 + timeout
            with cond:
                if self._refuse_offline():    # the settled epoch may have moved pages
                    return EvacuationReport()
                self._enter("draining")
            try:
                with cond:
                    while self._active or self._inflight_in:
                        left = None if deadline is None else deadline - time.perf_counter()
                        if left is not None and left <= 0:
                            rep = EvacuationReport(refused=True, reason=(
                                f"timed out waiting for {self._active} running launches and "
                                f"{self._inflight_in} migrations onto the device"))
                            raise OfflineRefusedError(f"device offline: {rep.reason}", rep)
                        cond.wait(left)
                t_fence = time.perf_counter() - t0
                with cond:
                    drop_all_duplicates(sp)
                rep = evacuate(sp, self.node.id, deadline, sp.tunables.evacuate_verify) \
                    if self.node.used_frames else EvacuationReport()
                rep.fence_seconds = t_fence
            except BaseException:
                with cond:
                    self._enter("online")
                    cond.notify_all()
                raise
            with cond:
                self.state = "offline"
                cond.notify_all()
            sp.vmstat.add(device_offline=1, pgevacuate=rep.pages)
            return rep

    def _refuse_offline(self) -> bool:
        """Raise :class:`OfflineRefusedError` if an offline must be refused now; True if the
        device is offline already (space lock held)."""
        self._space._check_open()
        if self.state == "offline":
            return True
        refusal = precheck(self._space, self.node.id) or self._waits_for_itself()
        if refusal is not None:
            raise OfflineRefusedError(f"device offline refused: {refusal.reason}", refusal)
        return False

    def _enter(self, state: str) -> None:
        """Go to ``state`` (space lock held); the trace has each change of whether new pages
        may land on the device (online, or not: draining and offline alike)."""
        if (state == "online") != (self.state == "online"):
            self._space.trace._user({"op": "device", "online": state == "online"})
        self.state = state

    def _waits_for_itself(self) -> EvacuationReport | None:
        """A refusal if this thread is inside its own launch, or writing device pages (a
        kernel, a counters subscriber or a migrate listener called during a write): the
        offline would wait for that work to leave, forever (space lock held)."""
        sp, me = self._space, threading.get_ident()
        if self._runners.get(me):
            why = "called from inside a launch of this thread, which it would wait for"
        elif me in sp._listening:
            why = ("called from a migrate listener: the migration that called it has not "
                   "finished, and the offline would wait for it")
        elif any(t == me and (sp.pt.node[lo:hi] == self.node.id).any()
                 for lo, hi, t in sp._writers):
            why = ("called from inside this thread's own write to device pages (a host_access "
                   "block, a counters subscriber), which it would wait for")
        else:
            return None
        return EvacuationReport(refused=True, reason=why)

    def online(self) -> None:
        """Put an offline device back in service (a no-op if it is online)."""
        self._space._settle_ahead()
        with self._lifecycle, self._space._cond:
            self._space._check_open()
            self._enter("online")
            self._space._cond.notify_all()

    def reset(self, timeout: float | None = None) -> EvacuationReport:
        """Offline (evacuate), wipe the device memory, online.  On the CPU stand-in the wipe
        poisons every device frame with 0xDEADBEEF, so a stale mapping would show it; on the
        cuda backend it releases the GPU-side scratch and the stream.  Never resets or
        reconfigures a physical GPU.  Callbacks from :meth:`on_reset` run afterwards."""
        with self._lifecycle:
            rep = self.offline(timeout)
            with self._space._cond:
                if self.node.used_frames:
                    raise AssertionError("device frames still in use after evacuation")
                self.node.poison_all()
                if self._space.gpu is not None:
                    self._space.gpu.reset()
            self.resets += 1
            self._space.vmstat.add(device_reset=1)
            self.online()
        for cb in list(self._reset_callbacks):
            try:
                cb(rep)
            except Exception as exc:  # noqa: BLE001 - a library's callback must not break reset
                warnings.warn(f"on_reset callback {cb!r} raised {exc!r}", RuntimeWarning,
                              stacklevel=2)
        return rep

    def on_reset(self, callback: Callable[[EvacuationReport], None]
                 ) -> Callable[[EvacuationReport], None]:
        """Call ``callback(report)`` after every reset (usable as a decorator)."""
        if not callable(callback):
            raise TypeError(f"on_reset needs a callable, got {type(callback).__name__}")
        self._reset_callbacks.append(callback)
        return callback

    def __repr__(self) -> str:
        return f"<Device node={self.node.id} {self.state} capacity={self.node.capacity}>"
