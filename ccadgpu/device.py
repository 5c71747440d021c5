"""The emulated device: its memory node, its state, and (later) its kernels."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

from .errors import DeviceOfflineError

if TYPE_CHECKING:
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
            self._active += 1
        try:
            yield
        finally:
            with cond:
                self._active -= 1
                cond.notify_all()

    def check_explicit_allocation(self) -> None:
        if self.state != "online":
            raise DeviceOfflineError(f"the device is {self.state}: explicit device allocations "
                                     "are refused until it is online again")

    def __repr__(self) -> str:
        return f"<Device node={self.node.id} {self.state} capacity={self.node.capacity}>"
