"""Exception types.  Every bad input raises one of these, with a message naming the problem,
and leaves the space exactly as it was."""
from __future__ import annotations


class CcadError(Exception):
    """Base class of every error ccadgpu raises on purpose."""


class UnsupportedPlatformError(CcadError, OSError):
    """The CPU stand-in needs Linux (memfd_create + mmap(MAP_FIXED))."""


class InvalidArgumentError(CcadError, ValueError):
    """A size, shape, dtype, page list or other argument is malformed."""


def index_changed(op: str, name: str) -> "InvalidArgumentError":
    """The error of an indexed op whose kernel met an index out of range that its check had
    passed (changed meanwhile): the kernel skipped it, on the stand-in and on a GPU alike."""
    return InvalidArgumentError(f"ops.{op}: {name} changed while the launch ran (another thread "
                                "storing into it?): entries found out of range were skipped, "
                                "the others written")


class UnknownNodeError(InvalidArgumentError):
    """A node id or name that the space does not have."""


class UnknownPlacementError(InvalidArgumentError):
    """A placement string that is not one of the documented ones."""


class CapacityError(CcadError, MemoryError):
    """A node (or the process's mapping budget) has too little room for the request."""


class MapCountError(CapacityError):
    """The request would need more memory mappings than ``vm.max_map_count`` allows."""


class ForeignArrayError(CcadError, TypeError):
    """The array's memory was not allocated by this space."""


class FreedArrayError(CcadError, ValueError):
    """The array belongs to an allocation that was freed."""


class PinnedError(CcadError, RuntimeError):
    """The operation would move or misplace pinned (unmovable) pages."""


class SpaceClosedError(CcadError, RuntimeError):
    """The space was closed; its arrays no longer hold data."""


class UnknownTunableError(CcadError, AttributeError, KeyError):
    """A tunable name that does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidTunableError(InvalidArgumentError):
    """A tunable value of the wrong type or out of range."""


class DeviceOfflineError(CcadError, RuntimeError):
    """The device is offline (or draining) and cannot take the request."""


class MigrationError(CcadError, RuntimeError):
    """A migration step failed; the message says which pages and what state they are in."""


class OfflineRefusedError(DeviceOfflineError):
    """Device offline was refused or could not finish (pinned device pages, too little host
    memory, a timeout, a copy that did not verify).  ``report`` says which pages and arrays are
    responsible; the device stays online and no data was lost."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


class UnknownProfileError(InvalidArgumentError):
    """A machine profile name (or file) that does not exist; the message lists the valid names."""


class ProfileError(InvalidArgumentError):
    """A machine profile file that is malformed (missing key, bad number)."""


class TraceFormatError(InvalidArgumentError):
    """A trace file that is not a ccadgpu trace, or of a version this library cannot read."""


class DLPackExportError(CcadError, BufferError):
    """A DLPack export that would not be honest: the array has pages on the device node, which
    is not CPU memory (move them to the host first, or ask for ``copy=True``)."""
