"""How nbdurable starts kernels (batch runs, the demo): on local unix sockets."""

from __future__ import annotations

import os
from typing import Any


def local_kernel_config(directory: str | None = None) -> Any:  # a traitlets Config
    """Kernels on local unix sockets in ``directory`` (default: a new temporary one) instead of
    open TCP ports, so no other user of the machine can connect."""
    import tempfile

    from traitlets.config import Config

    config = Config()
    config.KernelManager.transport = "ipc"
    # an absolute prefix: the kernel may run in another working directory
    config.KernelManager.ip = os.path.join(directory or tempfile.mkdtemp(prefix="nbdurable-"),
                                           "kernel")
    return config
