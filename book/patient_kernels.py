"""Sphinx extension: the book's notebooks execute with kernel channels that never sleep through a message.

MyST-NB executes each notebook through jupyter-cache and nbclient, which wait for a kernel's messages with one
``zmq.asyncio`` poll as long as the cell's timeout (an hour here). A message whose wake-up is lost would then wait
unseen for that hour, or, for an output, be dropped from the page. Neither MyST-NB nor jupyter-cache lets a book
choose the kernel client, so this extension gives jupyter_client's asyncio channel, in the build's own process,
the patient wait of ``bnlab.grading.kernels``: the same wait, cut into one-second slices that each end with a real
check of the socket.
"""

from __future__ import annotations


def setup(app):
    from bnlab.grading.kernels import patch_asyncio_channel

    patch_asyncio_channel()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
