"""Tests of StagedFileWriter: exact bytes in both I/O modes, bounded memory, writer errors and shutdown."""

from __future__ import annotations

import errno
import fcntl
import gc
import mmap
import os
import signal
import threading
import time
import weakref

import pytest

from airflow_provider_sepa.core import staging
from airflow_provider_sepa.core.staging import StagedFileWriter

BLOCK = mmap.PAGESIZE
THREAD_NAME = "sepa-staged-file-writer"


@pytest.fixture
def staged(tmp_path):
    """An empty file opened for writing, as the hook's mkstemp opens it, and its path."""
    path = tmp_path / "file.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    yield fd, path
    os.close(fd)


def same_file(descriptor: int, other: int) -> bool:
    return os.path.samestat(os.fstat(descriptor), os.fstat(other))


def writer_threads() -> list[threading.Thread]:
    """Return the writer threads that have not ended."""
    # is_alive(), because after an interrupted join() Python 3.11 can still list an ended thread.
    return [thread for thread in threading.enumerate() if thread.name == THREAD_NAME and thread.is_alive()]


def write_by_reading_into(writer: StagedFileWriter, data: bytes, piece: int) -> None:
    """Feed ``data`` the way the hook does: read at most ``piece`` bytes at a time into the free space."""
    offset = 0
    while offset < len(data):
        space = writer.space()
        count = min(len(space), piece, len(data) - offset)
        space[:count] = data[offset : offset + count]
        writer.commit(count)
        offset += count


def direct_io_available(folder) -> bool:
    """Return whether files in ``folder`` take O_DIRECT, probed on a file of their own."""
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as probe:
            return probe.direct
    finally:
        os.close(fd)
        os.unlink(folder / "probe")


class TestStagedFileWriterContent:
    @pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17])
    @pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
    @pytest.mark.parametrize("feed", ["read_into", "write"])
    def test_bytes_identical(self, staged, size, direct, feed):
        fd, path = staged
        data = os.urandom(size)

        with StagedFileWriter(fd, direct=direct, block_size=BLOCK, blocks=2) as writer:
            if feed == "write":
                writer.write(data[: size // 2])
                writer.write(data[size // 2 :])
            else:
                write_by_reading_into(writer, data, piece=1000)
            writer.finish()

        assert path.read_bytes() == data
        assert writer.size == size

    def test_direct_off_when_asked(self, staged):
        fd, _ = staged

        with StagedFileWriter(fd, direct=False) as writer:
            writer.finish()

        assert writer.direct is False
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0) == 0

    def test_direct_off_without_o_direct(self, monkeypatch, staged):
        fd, path = staged
        monkeypatch.setattr(staging, "_O_DIRECT", 0)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(b"x" * (BLOCK + 5))
            writer.finish()

        assert writer.direct is False
        assert path.read_bytes() == b"x" * (BLOCK + 5)

    @pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="the platform has no O_DIRECT")
    def test_direct_off_when_file_system_rejects_it(self, monkeypatch, staged):
        fd, path = staged
        real_fcntl = fcntl.fcntl

        def reject_direct(descriptor, command, argument=0):
            if command == fcntl.F_SETFL and argument & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_fcntl(descriptor, command, argument)

        monkeypatch.setattr(fcntl, "fcntl", reject_direct)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(b"y" * (2 * BLOCK))
            writer.finish()

        assert writer.direct is False
        assert path.read_bytes() == b"y" * (2 * BLOCK)

    @pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="the platform has no O_DIRECT")
    def test_direct_write_rejected_falls_back(self, monkeypatch, staged):
        fd, path = staged
        if not direct_io_available(path.parent):
            pytest.skip("the temporary folder's file system has no direct I/O")
        real_write = os.write
        rejected = []

        def reject_direct_writes(descriptor, data):
            if same_file(descriptor, fd) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                rejected.append(len(data))
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(descriptor, data)

        monkeypatch.setattr(os, "write", reject_direct_writes)
        data = os.urandom(3 * BLOCK)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(data)
            writer.finish()

        assert rejected == [BLOCK]
        assert writer.direct is False
        assert path.read_bytes() == data

    def test_tail_written_through_page_cache(self, staged):
        fd, path = staged
        if not direct_io_available(path.parent):
            pytest.skip("the temporary folder's file system has no direct I/O")
        data = os.urandom(2 * BLOCK + 100)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(data[: 2 * BLOCK])
            writer.write(data[2 * BLOCK :])
            writer.finish()

        # Direct I/O ends at the partial last block, which it cannot write.
        assert writer.direct is False
        assert path.read_bytes() == data


class TestStagedFileWriterResources:
    def test_memory_bounded_by_blocks(self, monkeypatch, staged):
        fd, path = staged
        mapped = []
        real_mmap = mmap.mmap

        def counting_mmap(*args, **kwargs):
            mapped.append(args)
            return real_mmap(*args, **kwargs)

        monkeypatch.setattr(staging.mmap, "mmap", counting_mmap)
        data = os.urandom(40 * BLOCK + 1)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=3) as writer:
            write_by_reading_into(writer, data, piece=BLOCK)
            writer.finish()

        assert len(mapped) == 3
        assert path.read_bytes() == data

    def test_buffered_writes_go_to_writeback(self, monkeypatch, staged):
        fd, path = staged
        advised: list[tuple[int, int, int]] = []
        monkeypatch.setattr(staging, "WRITEBACK_BYTES", 2 * BLOCK)
        monkeypatch.setattr(
            os, "posix_fadvise", lambda descriptor, offset, length, advice: advised.append((offset, length, advice))
        )
        data = os.urandom(5 * BLOCK + 123)

        with StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer:
            writer.write(data)
            writer.finish()

        assert path.read_bytes() == data
        assert advised == [
            (0, 2 * BLOCK, os.POSIX_FADV_DONTNEED),
            (2 * BLOCK, 2 * BLOCK, os.POSIX_FADV_DONTNEED),
        ]

    def test_buffered_writes_without_fadvise(self, monkeypatch, staged):
        fd, path = staged
        monkeypatch.setattr(staging, "WRITEBACK_BYTES", BLOCK)
        monkeypatch.delattr(os, "posix_fadvise")
        data = os.urandom(3 * BLOCK)

        with StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer:
            writer.write(data)
            writer.finish()

        assert path.read_bytes() == data

    def test_direct_writes_skip_fadvise(self, monkeypatch, staged):
        fd, path = staged
        if not direct_io_available(path.parent):
            pytest.skip("the temporary folder's file system has no direct I/O")
        advised = []
        monkeypatch.setattr(staging, "WRITEBACK_BYTES", BLOCK)
        monkeypatch.setattr(os, "posix_fadvise", lambda *arguments: advised.append(arguments))

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(os.urandom(4 * BLOCK))
            writer.finish()

        assert advised == []

    def test_thread_ends_after_finish(self, staged):
        fd, _ = staged

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(b"z" * (3 * BLOCK))
            assert len(writer_threads()) == 1
            writer.finish()
            assert writer_threads() == []


class TestStagedFileWriterFailures:
    def test_error_leaving_block_stops_thread(self, monkeypatch, staged):
        fd, path = staged
        written = []
        real_write = os.write

        def record_write(descriptor, data):
            if same_file(descriptor, fd):
                written.append(len(data))
            return real_write(descriptor, data)

        monkeypatch.setattr(os, "write", record_write)

        with (
            pytest.raises(RuntimeError, match="read failed"),
            StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer,
        ):
            writer.write(b"a" * (BLOCK + 10))
            raise RuntimeError("read failed")

        assert writer_threads() == []
        # The full block may or may not be written before the reader stops; the partial one never is.
        assert written in ([], [BLOCK])
        assert path.stat().st_size == sum(written)

    def test_disk_full_raised_by_finish(self):
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            with StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer:
                writer.write(b"b" * 10)
                with pytest.raises(OSError) as caught:
                    writer.finish()
        finally:
            os.close(fd)

        assert caught.value.errno == errno.ENOSPC
        assert writer_threads() == []

    def test_disk_full_raised_while_reading(self):
        fd = os.open("/dev/full", os.O_WRONLY)
        handed_over = 0
        try:
            with (
                pytest.raises(OSError) as caught,
                StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer,
            ):
                for _ in range(100):
                    writer.write(b"c" * BLOCK)
                    handed_over += 1
        finally:
            os.close(fd)

        assert caught.value.errno == errno.ENOSPC
        # The reader learns of the error at a hand-over, at most a few blocks later.
        assert handed_over < 5
        assert writer_threads() == []

    def test_fsync_error_raised(self, monkeypatch, staged):
        fd, _ = staged

        def failing_fsync(descriptor):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.write(b"d" * 5)
            with pytest.raises(OSError, match="Input/output error"):
                writer.finish()


class TestStagedFileWriterArguments:
    @pytest.mark.parametrize("block_size", [0, -BLOCK, BLOCK + 1])
    def test_invalid_block_size(self, staged, block_size):
        fd, _ = staged

        with pytest.raises(ValueError, match=f"Invalid block size {block_size}"):
            StagedFileWriter(fd, block_size=block_size)

    def test_invalid_block_count(self, staged):
        fd, _ = staged

        with pytest.raises(ValueError, match="Invalid block count 1"):
            StagedFileWriter(fd, blocks=1)

    def test_commit_beyond_space(self, staged):
        fd, _ = staged

        with StagedFileWriter(fd, block_size=BLOCK, blocks=2) as writer:
            writer.commit(10)
            expected = f"Invalid count {BLOCK}: the current block has {BLOCK - 10} bytes free"
            with pytest.raises(ValueError, match=expected):
                writer.commit(BLOCK)
            with pytest.raises(ValueError, match="Invalid count -1"):
                writer.commit(-1)


class Interrupted(Exception):
    """Raised from a signal handler, as Airflow's execution_timeout raises AirflowTaskTimeout."""


class TestStagedFileWriterInterruption:
    def test_interrupted_finish_stops_writing(self, monkeypatch, staged, tmp_path):
        fd, path = staged
        release = threading.Event()
        real_write = os.write
        writes_to_staged = []

        def held_write(descriptor, data):
            # The writer thread holds its first block until the alarm, so the alarm always
            # comes while the reader waits in finish().
            if same_file(descriptor, fd):
                release.wait(5)
                writes_to_staged.append(len(data))
            return real_write(descriptor, data)

        def interrupt(signum, frame):
            release.set()
            raise Interrupted

        monkeypatch.setattr(os, "write", held_write)
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            with pytest.raises(Interrupted), StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=4) as writer:
                writer.write(b"f" * (2 * BLOCK + 10))
                signal.setitimer(signal.ITIMER_REAL, 0.2)
                writer.finish()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

        assert writer_threads() == []
        # The block being written when the alarm came is completed; the rest is dropped.
        assert writes_to_staged == [BLOCK]
        time.sleep(0.3)
        assert writes_to_staged == [BLOCK]
        assert path.stat().st_size == BLOCK

    def test_failed_start_closes_duplicate(self, monkeypatch, staged):
        fd, _ = staged

        def no_thread(self):
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", no_thread)
        before = sorted(os.listdir("/proc/self/fd"))

        with (
            pytest.raises(RuntimeError, match="can't start new thread"),
            StagedFileWriter(fd, block_size=BLOCK, blocks=2),
        ):
            pass

        assert sorted(os.listdir("/proc/self/fd")) == before

    def test_interrupted_start_stops_thread(self, monkeypatch, staged):
        """An exception that comes after the thread started, inside start(), still ends the thread."""
        fd, _ = staged
        real_start = threading.Thread.start

        def start_then_interrupt(self):
            real_start(self)
            raise Interrupted

        monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
        before = sorted(os.listdir("/proc/self/fd"))

        with pytest.raises(Interrupted), StagedFileWriter(fd, block_size=BLOCK, blocks=2):
            pass

        deadline = time.monotonic() + 2
        while writer_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer_threads() == []
        assert sorted(os.listdir("/proc/self/fd")) == before

    def test_use_outside_with_rejected(self, staged):
        fd, _ = staged
        writer = StagedFileWriter(fd, block_size=BLOCK, blocks=2)

        with pytest.raises(RuntimeError, match="only inside a with block"):
            writer.write(b"i" * BLOCK)
        with pytest.raises(RuntimeError, match="only inside a with block"):
            writer.finish()
        assert writer_threads() == []

    def test_late_write_misses_reused_descriptor(self, monkeypatch, tmp_path):
        """A writer thread that outlives its reader writes to its own descriptor, not to a reused number."""
        fd = os.open(tmp_path / "file.part", os.O_WRONLY | os.O_CREAT, 0o600)
        release = threading.Event()
        real_write = os.write

        def held_write(descriptor, data):
            if threading.current_thread().name == THREAD_NAME:
                release.wait(5)
            return real_write(descriptor, data)

        monkeypatch.setattr(os, "write", held_write)
        with StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer:
            writer.write(b"g" * BLOCK)  # handed over, and held in the writer thread
            os.close(fd)
            other = os.open(tmp_path / "other.log", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                assert other == fd  # the number of the closed descriptor is reused
                release.set()
                writer.finish()
            finally:
                os.close(other)

        assert (tmp_path / "other.log").stat().st_size == 0
        assert (tmp_path / "file.part").stat().st_size == BLOCK

    def test_writer_freed_after_error(self):
        fd = os.open("/dev/full", os.O_WRONLY)
        gc.disable()
        try:
            with (
                pytest.raises(OSError, match="No space left"),
                StagedFileWriter(fd, direct=False, block_size=BLOCK, blocks=2) as writer,
            ):
                writer.write(b"h" * 10)
                writer.finish()
            reference = weakref.ref(writer)
            del writer
            assert reference() is None
        finally:
            gc.enable()
            os.close(fd)
