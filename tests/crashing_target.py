"""A target that kills its own process with SIGSEGV on loud input, as a native library
crash would: used to test how a build reports a worker that dies. Importing this module
registers it; tests remove it from the registry again (see ``crash_target`` in
test_build_safety.py)."""

from __future__ import annotations

import os
import signal

import numpy as np

from featurestore.targets import DecodedClip, Target, register


class Crash(Target):
    name = "crash"
    dim = 1
    library = "numpy"
    description = "peak amplitude; dies of SIGSEGV on a clip that peaks above 0.9"

    def compute(self, frames: DecodedClip) -> np.ndarray:
        if np.abs(frames.y).max() > 0.9:
            os.kill(os.getpid(), signal.SIGSEGV)
        return np.full((frames.n_frames, 1), np.abs(frames.y).max(), dtype=np.float32)


def ensure_registered() -> None:
    from featurestore.targets import REGISTRY

    if "crash" not in REGISTRY:
        register(Crash)


ensure_registered()
