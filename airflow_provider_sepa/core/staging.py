"""Writing a download into its staged file: whole blocks from a writer thread, with direct I/O where possible."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
import traceback
from types import TracebackType

#: Bytes per block. A full block is one write. The size is a multiple of every disk's
#: logical block size, as direct I/O requires.
BLOCK_SIZE = 1024 * 1024
#: Blocks per download. The reader waits for a free block when the disk falls behind, so a
#: download never holds more than BLOCKS * BLOCK_SIZE bytes in memory, whatever its size.
BLOCKS = 4
#: Without direct I/O, each time this many more bytes are written they go to the kernel's
#: writeback and out of the page cache (POSIX_FADV_DONTNEED).
WRITEBACK_BYTES = 16 * 1024 * 1024

_O_DIRECT = getattr(os, "O_DIRECT", 0)


class StagedFileWriter:
    """Write a byte stream to an open file from a second thread, one block at a time.

    The reader fills a block, either by reading straight into :meth:`space` and calling
    :meth:`commit`, or with :meth:`write`. A full block goes to the writer thread and the
    reader goes on with the next free block, so reading and hashing overlap with the disk
    write.

    Where the file system takes it, the file gets O_DIRECT, and full blocks go from memory
    to the disk without a copy into the page cache. In the download benchmark of
    docs/benchmarks.md, a 1 GiB download took 0.25 s of system CPU time this way, and
    curl, writing through the page cache, 2.26 s. The last, partial block is written
    through the page cache, because direct I/O takes only whole blocks. Where direct I/O
    is not available (no O_DIRECT on the platform, or a file system that rejects it),
    every write goes through the page cache, and the written part goes to the kernel's
    writeback every WRITEBACK_BYTES.

    NOTE: direct I/O was measured on ext4 only. On a network file system such as NFS, where
    each direct write waits for the server, it may be slower than buffered writes.

    Use it as a context manager and call :meth:`finish` when the stream has ended. Leaving
    the ``with`` block without :meth:`finish` stops the writer thread and drops the blocks
    not yet written. An error of the writer thread is raised in the reader at its next
    block or at :meth:`finish`.
    """

    def __init__(
        self, fd: int, *, direct: bool = True, block_size: int | None = None, blocks: int | None = None
    ) -> None:
        # The module constants are read here, not bound as defaults, so that a benchmark can set them.
        block_size = BLOCK_SIZE if block_size is None else block_size
        blocks = BLOCKS if blocks is None else blocks
        if block_size <= 0 or block_size % mmap.PAGESIZE:
            raise ValueError(f"Invalid block size {block_size}: use a positive multiple of {mmap.PAGESIZE} bytes.")
        if blocks < 2:
            raise ValueError(f"Invalid block count {blocks}: the reader and the writer need at least 2 blocks.")
        self._fd = fd
        self._block_size = block_size
        self.direct = direct and _set_direct_io(fd, True)
        #: Bytes accepted from the reader so far.
        self.size = 0

        # Anonymous mappings start on a page boundary, as direct I/O requires of its buffers.
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(blocks):
            self._free.put(mmap.mmap(-1, block_size))
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._written = 0
        self._written_back = 0

        self._block = self._free.get()
        self._view = memoryview(self._block)
        self._filled = 0
        self._finished = False
        self._abandoned = False
        self._end_sent = False
        self._thread: threading.Thread | None = None
        self._writer_fd = -1
        # Holds the writer's descriptor until one side closes it. list.pop() is atomic.
        self._unclosed_writer_fds: list[int] = []
        # The writer thread sets the flag as its last step, and the queue wakes the reader.
        # Thread.join() and threading.Event are not enough here. An exception from a signal
        # handler can interrupt either of them inside Python code and leave it broken. A later
        # join() then returns at once (seen on Python 3.11.7), and a later Event.wait() never.
        self._writer_ended = False
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()

    def __enter__(self) -> StagedFileWriter:
        # The thread starts here, not in __init__, so that it never runs without __exit__ to stop it.
        # It writes through its own duplicate of the descriptor and closes it when it ends.
        # Should the thread outlive the reader, because an exception interrupted the wait for
        # it, its last write still lands in this file, and never in a file that reuses the
        # caller's descriptor number after the caller closed it.
        self._writer_fd = os.dup(self._fd)
        self._unclosed_writer_fds.append(self._writer_fd)
        self._thread = threading.Thread(target=self._write_blocks, name="sepa-staged-file-writer", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            # The thread may have started before the exception came; the end marker stops it.
            self._send_end()
            self._close_writer_fd()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        # NOTE: an exception from a signal handler that comes before _stop() runs here leaves
        # the writer thread waiting for blocks, with its 4 blocks and its descriptor of the
        # removed staged file, until the process ends. Airflow ends a task's process after a
        # timeout, and the window is a few statements long.
        if self._thread is None:
            return
        if not self._finished:
            self._abandoned = True
        self._stop()
        if self._error is not None:
            # The error's traceback holds the writer thread's frames, which refer back to this
            # writer and its blocks. Clearing them lets reference counting free the blocks.
            traceback.clear_frames(self._error.__traceback__)

    # -- reader side -------------------------------------------------------------------

    def space(self) -> memoryview:
        """Return the free part of the current block, to read into. Never empty."""
        return self._view[self._filled :]

    def commit(self, count: int) -> None:
        """Account for ``count`` bytes read into :meth:`space`, and hand over the block when it is full."""
        if not 0 <= count <= self._block_size - self._filled:
            free = self._block_size - self._filled
            raise ValueError(f"Invalid count {count}: the current block has {free} bytes free.")
        self._filled += count
        self.size += count
        if self._filled == self._block_size:
            self._hand_over()

    def write(self, data: bytes | memoryview) -> None:
        """Copy ``data`` into the blocks."""
        remaining = memoryview(data).cast("B")
        while remaining:
            space = self.space()
            count = min(len(space), len(remaining))
            space[:count] = remaining[:count]
            self.commit(count)
            remaining = remaining[count:]

    def finish(self) -> None:
        """Write the last block, wait for the writer thread and fsync the file.

        :raises OSError: when a write or the fsync failed.
        """
        self._require_started()
        if self._filled:
            self._hand_over()
        self._stop()
        self._raise_writer_error()
        os.fsync(self._fd)
        self._finished = True

    def _hand_over(self) -> None:
        self._require_started()
        self._raise_writer_error()
        self._full.put((self._block, self._filled))
        self._block = self._free.get()
        self._view = memoryview(self._block)
        self._filled = 0

    def _require_started(self) -> None:
        if self._thread is None:
            raise RuntimeError("StagedFileWriter writes only inside a with block, which starts its writer thread.")

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        self._send_end()
        while not self._writer_ended:
            with contextlib.suppress(queue.Empty):
                self._wakeups.get(timeout=0.05)
        if self._thread is not None:
            self._thread.join()

    def _send_end(self) -> None:
        # A second end marker, after an interruption between these two lines, is harmless.
        if not self._end_sent:
            self._full.put(None)
            self._end_sent = True

    def _close_writer_fd(self) -> None:
        try:
            descriptor = self._unclosed_writer_fds.pop()
        except IndexError:
            return
        os.close(descriptor)

    # -- writer thread -----------------------------------------------------------------

    def _write_blocks(self) -> None:
        try:
            while (item := self._full.get()) is not None:
                block, length = item
                try:
                    # After an error, or once the reader abandoned the file, blocks only go back.
                    if self._error is None and not self._abandoned:
                        self._write_block(memoryview(block)[:length])
                except BaseException as error:  # noqa: BLE001 - raised again in the reader
                    self._error = error
                finally:
                    self._free.put(block)
        finally:
            self._close_writer_fd()
            self._writer_ended = True
            self._wakeups.put(None)

    def _write_block(self, data: memoryview) -> None:
        if self.direct and len(data) < self._block_size:
            self.direct = _set_direct_io(self._writer_fd, False)
        while data:
            try:
                count = os.write(self._writer_fd, data)
            except OSError as error:
                if not (self.direct and error.errno == errno.EINVAL):
                    raise
                # Some file systems take O_DIRECT when it is set and reject the writes.
                self.direct = _set_direct_io(self._writer_fd, False)
                continue
            data = data[count:]
            self._written += count
        if not self.direct:
            self._advise_writeback()

    def _advise_writeback(self) -> None:
        advise = getattr(os, "posix_fadvise", None)
        if advise is None or self._written - self._written_back < WRITEBACK_BYTES:
            return
        advise(self._writer_fd, self._written_back, self._written - self._written_back, os.POSIX_FADV_DONTNEED)
        self._written_back = self._written


def _set_direct_io(fd: int, enable: bool) -> bool:
    """Set or clear O_DIRECT on an open file and return whether it is set afterwards."""
    if not _O_DIRECT:
        return False
    import fcntl

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    new_flags = flags | _O_DIRECT if enable else flags & ~_O_DIRECT
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, new_flags)
    except OSError:
        # Linux raises EINVAL here for a file system without direct I/O.
        if enable:
            return False
        raise
    return enable
