"""The panel's choices that the parameter node stores: where the network runs, and how hard it tries."""

import enum

try:
    from slicer.i18n import tr as _
except ImportError:  # outside Slicer (tools that read the options)

    def _(text: str) -> str:
        return text


class Device(enum.Enum):
    """``--device`` of the command line; the backend follows it (``run.BACKEND_FOR_DEVICE``)."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": _("Automatic (GPU if available)"), "cpu": _("CPU"), "cuda": _("GPU (CUDA)")}[self.value]


class Quality(enum.Enum):
    """``--quality`` of the command line."""

    FAST = "fast"
    STANDARD = "standard"
    BEST = "best"

    def label(self) -> str:
        return {
            "fast": _("Fast (one pass)"),
            "standard": _("Standard (test-time flips)"),
            "best": _("Best (denser windows, slowest)"),
        }[self.value]
