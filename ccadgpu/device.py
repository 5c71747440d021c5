"""The emulated device: its memory node, its state, and (later) its kernels."""
from __future__ import annotations

from typing import TYPE_CHECKING

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

    @property
    def id(self) -> int:
        return self.node.id

    @property
    def capacity(self) -> int:
        return self.node.capacity

    def accepts_pages(self) -> bool:
        """New pages may land on the device only while it is online."""
        return self.state == "online"

    def check_explicit_allocation(self) -> None:
        if self.state != "online":
            raise DeviceOfflineError(f"the device is {self.state}: explicit device allocations "
                                     "are refused until it is online again")

    def __repr__(self) -> str:
        return f"<Device node={self.node.id} {self.state} capacity={self.node.capacity}>"
