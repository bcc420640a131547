"""A workaround for a lost wake-up when nbclient waits on a kernel's channels (jupyter/nbclient#312)."""
import time
from queue import Empty


def poll_in_slices(kc, step: float = 0.5):
    """Make `kc`'s shell and iopub channels wait for a message in slices of `step` seconds, never more, so that a
    missed wake-up costs at most `step`. zmq's asyncio poll is edge-triggered: now and then (3 cells in 60 here, around
    ipywidgets' comm traffic) the edge for a message that has already arrived is missed, and the wait runs to its full
    timeout (nbclient's 600 s) before the final non-blocking check finds the message. Nothing is lost but time, so a
    sliced wait changes nothing else: a message found is returned at once, and Empty is raised only at the deadline."""
    for channel in (kc.shell_channel, kc.iopub_channel):
        channel.get_msg = _sliced(channel.get_msg, step)


def _sliced(get_msg, step):
    async def get_msg_sliced(timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if deadline is None else min(step, max(0.0, deadline - time.monotonic()))
            try: return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline: raise
    return get_msg_sliced
