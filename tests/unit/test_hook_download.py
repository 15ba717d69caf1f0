"""Tests of the sync hook's file download: exact bytes, digests, destinations and cleanup."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import threading
import uuid
import zlib
from pathlib import Path

import fsspec
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach

from airflow_provider_sepa.core import endpoints, staging
from airflow_provider_sepa.core.errors import (
    SepaExportDownloadError,
    SepaExportInputError,
    SepaExportNotFoundError,
    SepaExportScopeError,
)
from airflow_provider_sepa.hooks import sepa_export

FILE_ID = "file-0001"
# A SEPA-XML body with a UTF-8 byte order mark, umlauts, an en dash and a euro sign.
BODY = (
    '\ufeff<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.008.001.02">'
    "<Nm>Müller &amp; Søn – Zahlung 12,50 €</Nm></Document>\n"
).encode("utf-8")
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()
BODY_404 = {"message": "Given resource has not been found."}


class FailingBody(io.RawIOBase):
    """A response body that returns ``head`` and then fails like a dropped connection."""

    def __init__(self, head: bytes) -> None:
        self._head = head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._head:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        size = min(len(buffer), len(self._head))
        buffer[:size] = self._head[:size]
        self._head = self._head[size:]
        return size


@pytest.fixture
def file_url(api) -> str:
    return f"{api.files_url}/{FILE_ID}"


@pytest.fixture
def memory_bucket():
    """An in-memory object store reachable as ``memory://<bucket>``, emptied after the test."""
    filesystem = fsspec.filesystem("memory")
    attach(protocol="memory", fs=filesystem)
    bucket = f"bucket-{uuid.uuid4().hex}"
    yield f"memory://{bucket}"
    if filesystem.exists(f"/{bucket}"):
        filesystem.rm(f"/{bucket}", recursive=True)


def files_in(folder: Path) -> list[str]:
    """Return the names of every file under ``folder``, hidden ones included."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


class TestSepaExportHookDownload:
    def test_download_bytes_identical(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY, headers={"Content-Type": "text/plain; charset=utf-8"})
        destination = tmp_path / "out" / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY
        assert destination.read_bytes().startswith(b"\xef\xbb\xbf")

    def test_download_record(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY, headers={"Content-Length": str(len(BODY))})
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, destination)

        assert record.path == str(destination)
        assert record.size_bytes == len(BODY)
        assert record.sha256 == BODY_SHA256
        assert record.file_id == FILE_ID

    @pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
    def test_download_large_body(self, monkeypatch, direct, hook, requests_mock, token_endpoint, file_url, tmp_path):
        if not direct:
            monkeypatch.setattr(staging, "_O_DIRECT", 0)
        body = os.urandom(3 * staging.BLOCK_SIZE + 123)
        requests_mock.get(file_url, content=body, headers={"Content-Length": str(len(body))})
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, destination)

        assert destination.read_bytes() == body
        assert record.size_bytes == len(body)
        assert record.sha256 == hashlib.sha256(body).hexdigest()

    def test_download_leaves_only_target(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)

        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert files_in(tmp_path) == ["main.xml"]

    def test_download_request(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)

        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))
        request = requests_mock.last_request

        assert request.url == file_url
        assert request.headers["Authorization"] == f"Bearer {token_endpoint.issued[0]}"

    def test_download_file_id_quoted(self, hook, api, requests_mock, token_endpoint, tmp_path):
        requests_mock.get(f"{api.files_url}/a%2Fb%3Fc", content=BODY)

        record = hook.download_file("a/b?c", str(tmp_path / "main.xml"))

        assert requests_mock.last_request.path == "/sepa-export/acme/files/a%2fb%3fc"
        assert record.size_bytes == len(BODY)

    def test_download_empty_body(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=b"", headers={"Content-Length": "0"})
        destination = tmp_path / "empty.xml"

        record = hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == b""
        assert record.sha256 == hashlib.sha256(b"").hexdigest()

    def test_download_gzip_encoded(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        compressed = gzip.compress(BODY * 50)
        requests_mock.get(
            file_url, content=compressed, headers={"Content-Encoding": "gzip", "Content-Length": str(len(compressed))}
        )
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY * 50
        assert record.size_bytes == len(BODY) * 50
        assert requests_mock.call_count == 2

    def test_download_folder_destination(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)

        record = hook.download_file(FILE_ID, f"{tmp_path}/sepa/")

        assert record.path == f"{tmp_path}/sepa/{FILE_ID}.xml"
        assert (tmp_path / "sepa" / f"{FILE_ID}.xml").read_bytes() == BODY

    def test_download_existing_folder_without_slash(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)
        (tmp_path / "sepa").mkdir()

        with pytest.raises(SepaExportDownloadError, match="is a folder"):
            hook.download_file(FILE_ID, str(tmp_path / "sepa"))

        assert files_in(tmp_path) == []

    def test_download_short_body_retried(self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        requests_mock.get(
            file_url,
            [
                {"content": BODY[:10], "headers": {"Content-Length": str(len(BODY))}},
                {"content": BODY, "headers": {"Content-Length": str(len(BODY))}},
            ],
        )
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY
        assert record.sha256 == BODY_SHA256
        assert len(sleeps) == 1
        assert files_in(tmp_path) == ["main.xml"]

    def test_download_short_body_no_partial_file(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY[:10], headers={"Content-Length": str(len(BODY))})

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert files_in(tmp_path) == []
        assert endpoints.DOWNLOAD_ENDPOINT in message
        assert f"file {FILE_ID}" in message
        assert "after 3 attempts" in message
        assert f"got 10 of {len(BODY)} bytes" in message

    def test_download_broken_stream_no_partial_file(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        # One fresh body per attempt, because requests-mock hands the same object to every response.
        requests_mock.get(file_url, [{"body": FailingBody(BODY[:20])} for _ in range(3)])

        with pytest.raises(SepaExportDownloadError, match="connection closed"):
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert files_in(tmp_path) == []
        assert requests_mock.call_count == 4

    def test_download_write_error_no_partial_file(
        self, hook, requests_mock, token_endpoint, file_url, tmp_path, monkeypatch
    ):
        def copy_half_then_fail(response, writer):
            writer.write(BODY[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(sepa_export, "_copy_body", copy_half_then_fail)
        requests_mock.get(file_url, content=BODY)

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert f"staged file in {tmp_path} failed: No space left on device." in message
        assert f"file {FILE_ID}" in message
        assert "No file was written. Free disk space" in message
        assert isinstance(caught.value.__cause__, OSError)
        assert files_in(tmp_path) == []

    def test_disk_full_no_partial_file(self, hook, requests_mock, token_endpoint, file_url, tmp_path, monkeypatch):
        real_write = os.write

        def staged_file_full(fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", staged_file_full)
        requests_mock.get(file_url, content=os.urandom(3 * staging.BLOCK_SIZE))

        with pytest.raises(SepaExportDownloadError, match="No space left on device"):
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert files_in(tmp_path) == []
        running = [thread for thread in threading.enumerate() if thread.is_alive()]
        assert "sepa-staged-file-writer" not in [thread.name for thread in running]

    def test_download_404(self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        requests_mock.get(file_url, status_code=404, json=BODY_404)

        with pytest.raises(SepaExportNotFoundError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert endpoints.DOWNLOAD_ENDPOINT in message
        assert "HTTP 404" in message
        assert f"file {FILE_ID}" in message
        assert "Given resource has not been found." in message
        assert files_in(tmp_path) == []
        assert sleeps == []

    def test_download_403_names_media_scope(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(
            file_url, status_code=403, json={"message": "forbidden", "details": ["Missing required scopes"]}
        )

        with pytest.raises(SepaExportScopeError, match=endpoints.SCOPE_MEDIA_VIEW):
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

    def test_download_5xx_retried(self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        requests_mock.get(file_url, [{"status_code": 503, "text": "busy"}, {"content": BODY}])

        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert (tmp_path / "main.xml").read_bytes() == BODY
        assert len(sleeps) == 1

    def test_download_401_reauthenticates(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(
            file_url,
            [{"status_code": 401, "json": {"fault": {"faultstring": "Access Token expired"}}}, {"content": BODY}],
        )

        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert (tmp_path / "main.xml").read_bytes() == BODY
        assert token_endpoint.call_count == 2

    def test_download_existing_identical_kept(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "main.xml"
        destination.write_bytes(BODY)
        os.utime(destination, (1_000_000, 1_000_000))
        inode = destination.stat().st_ino

        record = hook.download_file(FILE_ID, str(destination))

        assert record.sha256 == BODY_SHA256
        assert destination.stat().st_ino == inode
        assert destination.stat().st_mtime == 1_000_000
        assert files_in(tmp_path) == ["main.xml"]

    def test_download_existing_different_rejected(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "main.xml"
        destination.write_bytes(b"<Document>older export</Document>")

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(destination))

        assert "already exists with different content" in str(caught.value)
        assert f"file {FILE_ID}" in str(caught.value)
        assert destination.read_bytes() == b"<Document>older export</Document>"
        assert files_in(tmp_path) == ["main.xml"]

    @pytest.mark.parametrize(
        ("destination", "message"),
        [
            ("", "Invalid destination ''"),
            (None, "Invalid destination ''"),
            ("main.xml", "use an absolute path"),
            ("out/main.xml", "use an absolute path"),
            (Path("relative.xml"), "use an absolute path"),
            ("http://example.test/upload", "not storage locations"),
            ("https://example.test/upload", "not storage locations"),
        ],
        ids=["empty", "none", "bare-name", "relative-folder", "relative-path-object", "http", "https"],
    )
    def test_download_bad_destination_before_request(self, hook, requests_mock, destination, message):
        with pytest.raises(SepaExportInputError, match=message):
            hook.download_file(FILE_ID, destination)

        assert requests_mock.call_count == 0

    @pytest.mark.parametrize("file_id", ["", " x", "..", "a\x00b"], ids=["empty", "leading-space", "dot-dot", "nul"])
    def test_download_bad_file_id_before_request(self, hook, requests_mock, tmp_path, file_id):
        with pytest.raises(SepaExportInputError):
            hook.download_file(file_id, str(tmp_path / "main.xml"))

        assert requests_mock.call_count == 0

    def test_download_file_url_storage_path(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)
        destination = ObjectStoragePath(f"file://{tmp_path}/store/main.xml")

        record = hook.download_file(FILE_ID, destination)

        assert (tmp_path / "store" / "main.xml").read_bytes() == BODY
        assert record.path == f"{tmp_path}/store/main.xml"
        assert files_in(tmp_path) == ["store/main.xml"]

    def test_download_file_url_string(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)

        hook.download_file(FILE_ID, f"file://{tmp_path}/main.xml")

        assert (tmp_path / "main.xml").read_bytes() == BODY


class TestSepaExportHookDownloadObjectStorage:
    def test_storage_download(self, hook, requests_mock, token_endpoint, file_url, memory_bucket):
        requests_mock.get(file_url, content=BODY)

        record = hook.download_file(FILE_ID, f"{memory_bucket}/sepa/main.xml")

        assert ObjectStoragePath(f"{memory_bucket}/sepa/main.xml").read_bytes() == BODY
        assert record.path == f"{memory_bucket}/sepa/main.xml"
        assert record.sha256 == BODY_SHA256

    def test_storage_folder_destination(self, hook, requests_mock, token_endpoint, file_url, memory_bucket):
        requests_mock.get(file_url, content=BODY)

        record = hook.download_file(FILE_ID, f"{memory_bucket}/sepa/")

        assert record.path == f"{memory_bucket}/sepa/{FILE_ID}.xml"

    def test_storage_existing_identical_kept(self, hook, requests_mock, token_endpoint, file_url, memory_bucket):
        requests_mock.get(file_url, content=BODY)
        target = ObjectStoragePath(f"{memory_bucket}/main.xml")
        target.write_bytes(BODY)

        record = hook.download_file(FILE_ID, target)

        assert record.sha256 == BODY_SHA256
        assert target.read_bytes() == BODY

    def test_storage_existing_different_rejected(self, hook, requests_mock, token_endpoint, file_url, memory_bucket):
        requests_mock.get(file_url, content=BODY)
        target = ObjectStoragePath(f"{memory_bucket}/main.xml")
        target.write_bytes(b"older")

        with pytest.raises(SepaExportDownloadError, match="already exists with different content"):
            hook.download_file(FILE_ID, target)

        assert target.read_bytes() == b"older"

    def test_storage_short_body_nothing_written(self, hook, requests_mock, token_endpoint, file_url, memory_bucket):
        requests_mock.get(file_url, content=BODY[:5], headers={"Content-Length": str(len(BODY))})

        with pytest.raises(SepaExportDownloadError):
            hook.download_file(FILE_ID, f"{memory_bucket}/main.xml")

        assert not ObjectStoragePath(f"{memory_bucket}/main.xml").exists()


class FolderFsync:
    """os.fsync that records the inodes of the folders it syncs, and raises ``error`` for folders when set."""

    def __init__(self) -> None:
        self.synced_inodes: list[int] = []
        self.error: OSError | None = None
        self._real_fsync = os.fsync

    def __call__(self, descriptor: int) -> None:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            if self.error is not None:
                raise self.error
            self.synced_inodes.append(status.st_ino)
        self._real_fsync(descriptor)


@pytest.fixture
def folder_fsync(monkeypatch) -> FolderFsync:
    fake = FolderFsync()
    monkeypatch.setattr(os, "fsync", fake)
    return fake


class TestPublishDurability:
    def test_folder_synced_after_publish(self, folder_fsync, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "out" / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert folder_fsync.synced_inodes == [(tmp_path / "out").stat().st_ino]
        assert destination.read_bytes() == BODY

    @pytest.mark.parametrize("code", [errno.EINVAL, errno.EOPNOTSUPP])
    def test_folder_sync_unsupported_skipped(
        self, folder_fsync, code, hook, requests_mock, token_endpoint, file_url, tmp_path, captured_logs
    ):
        folder_fsync.error = OSError(code, os.strerror(code))
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY
        assert f"Could not sync the folder {tmp_path}" in captured_logs.text
        assert "the file system does not support it" in captured_logs.text

    @pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
    def test_folder_not_openable_skipped(
        self, monkeypatch, code, hook, requests_mock, token_endpoint, file_url, tmp_path, captured_logs
    ):
        """A folder that the worker may write to but not list (mode 0o330) cannot be opened for its fsync."""
        real_open = os.open

        def folder_not_readable(path, flags, *args, **kwargs):
            if flags & os.O_DIRECTORY:
                raise PermissionError(code, os.strerror(code), path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", folder_not_readable)
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY
        assert f"opening it failed: {os.strerror(code)}" in captured_logs.text

    def test_folder_sync_error_raised(self, folder_fsync, hook, requests_mock, token_endpoint, file_url, tmp_path):
        folder_fsync.error = OSError(errno.EIO, "Input/output error")
        requests_mock.get(file_url, content=BODY)
        destination = tmp_path / "main.xml"

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(destination))

        message = str(caught.value)
        assert f"syncing the folder {tmp_path} after publishing the file failed: Input/output error." in message
        assert f"for file {FILE_ID}" in message
        assert f"{destination} is complete, but its name may be missing" in message
        # The file stays: another download of it may already have reported it as written.
        assert files_in(tmp_path) == ["main.xml"]
        assert destination.read_bytes() == BODY

    def test_identical_file_synced_again(self, folder_fsync, hook, requests_mock, token_endpoint, file_url, tmp_path):
        destination = tmp_path / "main.xml"
        destination.write_bytes(BODY)
        requests_mock.get(file_url, content=BODY)

        hook.download_file(FILE_ID, str(destination))

        assert folder_fsync.synced_inodes == [tmp_path.stat().st_ino]
        assert files_in(tmp_path) == ["main.xml"]


class TestDownloadEncodings:
    """Compressed bodies are decoded by the hook, which checks that the compressed stream is complete."""

    def test_accept_encoding_sent(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=BODY)

        hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert requests_mock.last_request.headers["Accept-Encoding"] == "gzip, deflate"
        assert requests_mock.last_request.headers["Authorization"].startswith("Bearer ")

    @pytest.mark.parametrize(
        ("encoding", "compress"),
        [
            ("gzip", gzip.compress),
            ("x-gzip", gzip.compress),
            ("GZIP", gzip.compress),
            ("deflate", zlib.compress),
            ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, without the zlib wrapper
            ("identity", lambda data: data),
        ],
        ids=["gzip", "x-gzip", "uppercase", "deflate-zlib", "deflate-raw", "identity"],
    )
    def test_encoded_body_decoded(self, encoding, compress, hook, requests_mock, token_endpoint, file_url, tmp_path):
        body = BODY * 5000
        wire = compress(body)
        requests_mock.get(
            file_url, content=wire, headers={"Content-Encoding": encoding, "Content-Length": str(len(wire))}
        )
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == body
        assert record.size_bytes == len(body)
        assert record.sha256 == hashlib.sha256(body).hexdigest()

    def test_gzip_members_joined(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        wire = gzip.compress(BODY) + gzip.compress(BODY[::-1])
        requests_mock.get(file_url, content=wire, headers={"Content-Encoding": "gzip"})
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY + BODY[::-1]

    def test_empty_gzip_body_empty_file(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=b"", headers={"Content-Encoding": "gzip", "Content-Length": "0"})
        destination = tmp_path / "main.xml"

        record = hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == b""
        assert record.size_bytes == 0

    @pytest.mark.parametrize(
        ("encoding", "wire", "reason"),
        [
            ("gzip", gzip.compress(BODY * 5000)[:-300], "ended before the end of its compressed stream"),
            ("deflate", zlib.compress(BODY * 5000)[:-300], "ended before the end of its compressed stream"),
            ("gzip", b"not gzip at all", "gzip body is invalid"),
            ("gzip", gzip.compress(BODY) + b"trailing bytes", "gzip body is invalid"),
            ("deflate", zlib.compress(BODY) + b"trailing", "data after the end of its compressed stream"),
        ],
        ids=["gzip-cut", "deflate-cut", "gzip-invalid", "gzip-trailing", "deflate-trailing"],
    )
    def test_broken_encoded_body_rejected(
        self, encoding, wire, reason, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps, captured_logs
    ):
        # The HTTP framing is complete: Content-Length matches the bytes sent.
        requests_mock.get(
            file_url, content=wire, headers={"Content-Encoding": encoding, "Content-Length": str(len(wire))}
        )

        with pytest.raises(SepaExportDownloadError, match=reason) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert "failed with HTTP 200" in message
        assert f"for file {FILE_ID} after 2 attempts" in message
        assert "invalid on two downloads" in message
        assert files_in(tmp_path) == []
        # An invalid body gets one more download, not the whole retry budget: token + 2 downloads.
        assert requests_mock.call_count == 3
        assert len(sleeps) == 1
        assert "the response body is invalid" in captured_logs.text
        assert reason in captured_logs.text

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    def test_cut_encoded_body_is_disconnect(
        self, encoding, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps
    ):
        """A compressed body that ends before its Content-Length is a broken connection, with all retries."""
        wire = (gzip.compress if encoding == "gzip" else zlib.compress)(os.urandom(50_000))
        # The body ends early while the header announces all bytes, as when the server closes early.
        cut = {
            "content": wire[: len(wire) // 2],
            "headers": {"Content-Encoding": encoding, "Content-Length": str(len(wire))},
        }
        requests_mock.get(file_url, [cut, cut, cut])

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert "failed with no response" in message
        assert "after 3 attempts" in message
        assert (
            f"connection closed before the response was complete (got {len(wire) // 2} of {len(wire)} bytes)" in message
        )
        assert len(sleeps) == 2

    def test_cut_cut_then_whole_body(self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        body = os.urandom(50_000)
        wire = gzip.compress(body)
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(wire))}
        cut = {"content": wire[:1000], "headers": headers}
        requests_mock.get(file_url, [cut, cut, {"content": wire, "headers": headers}])
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == body

    def test_invalid_body_status_after_disconnects(
        self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps
    ):
        """When the retries run out on an invalid body, the error still reports the HTTP 200 it got."""
        wire = gzip.compress(BODY)
        headers = {"Content-Encoding": "gzip", "Content-Length": str(len(wire))}
        cut = {"content": wire[:10], "headers": headers}
        invalid = {"content": wire[:-8] + bytes(8), "headers": headers}  # a zeroed CRC-32 and size
        requests_mock.get(file_url, [cut, cut, invalid])

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert "failed with HTTP 200" in message
        assert "after 3 attempts" in message
        assert "the response body is invalid" in message

    def test_invalid_then_valid_body(self, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        wire = gzip.compress(BODY)
        requests_mock.get(
            file_url,
            [
                {"content": wire[:-20], "headers": {"Content-Encoding": "gzip"}},
                {"content": wire, "headers": {"Content-Encoding": "gzip"}},
            ],
        )
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY
        assert files_in(tmp_path) == ["main.xml"]

    def test_gzip_zero_padding_accepted(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        requests_mock.get(file_url, content=gzip.compress(BODY) + bytes(512), headers={"Content-Encoding": "gzip"})
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY

    def test_non_ascii_content_length_ignored(self, hook, requests_mock, token_endpoint, file_url, tmp_path):
        # '²' passes str.isdigit() but not int(); like http.client, the hook ignores such a header.
        requests_mock.get(file_url, content=BODY, headers={"Content-Length": "\u00b2"})
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == BODY

    @pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "gzip, br"])
    def test_unknown_encoding_rejected(self, encoding, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps):
        requests_mock.get(file_url, content=b"\x00" * 100, headers={"Content-Encoding": encoding})

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert f"Content-Encoding {encoding!r}" in message
        assert f"for file {FILE_ID}" in message
        assert "No file was written." in message
        assert files_in(tmp_path) == []
        assert requests_mock.call_count == 2
        assert sleeps == []

    @pytest.mark.parametrize("encoding", ["gzip", ""])
    def test_body_read_without_readinto(
        self, monkeypatch, encoding, hook, requests_mock, token_endpoint, file_url, tmp_path
    ):
        """Without ``readinto`` on urllib3's private stream, the body is read through urllib3's public ``read``."""
        body = os.urandom(3 * staging.BLOCK_SIZE // 2)
        wire = gzip.compress(body) if encoding else body
        monkeypatch.setattr(sepa_export, "_read_into", None)  # fails the test if the private path is taken
        real_reader = sepa_export._body_reader

        class StreamWithoutReadinto:
            """The stream below urllib3, as a urllib3 version would have it that offers no ``readinto``."""

            def __init__(self, stream):
                self._stream = stream

            def __getattr__(self, name):
                if name == "readinto":
                    raise AttributeError(name)
                return getattr(self._stream, name)

        def reader_without_fp(response):
            response.raw._fp = StreamWithoutReadinto(response.raw._fp)
            return real_reader(response)

        monkeypatch.setattr(sepa_export, "_body_reader", reader_without_fp)
        requests_mock.get(file_url, content=wire, headers={"Content-Encoding": encoding})
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == body


class TestDownloadReadPaths:
    def test_fast_path_reads_into_blocks(self, monkeypatch, hook, requests_mock, token_endpoint, file_url, tmp_path):
        calls = []
        real_read_into = sepa_export._read_into

        def counting_read_into(body, buffer):
            calls.append(len(buffer))
            return real_read_into(body, buffer)

        monkeypatch.setattr(sepa_export, "_read_into", counting_read_into)
        body = os.urandom(2 * staging.BLOCK_SIZE)
        requests_mock.get(file_url, content=body)
        destination = tmp_path / "main.xml"

        hook.download_file(FILE_ID, str(destination))

        assert destination.read_bytes() == body
        assert calls
        assert max(calls) == staging.BLOCK_SIZE

    @pytest.mark.parametrize(
        ("failure", "reason"),
        [
            (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "before the whole body arrived"),
            (TimeoutError("timed out"), r"read timed out \(ReadTimeout\)"),
        ],
        ids=["reset", "timeout"],
    )
    def test_public_read_errors_retried(
        self, monkeypatch, failure, reason, hook, requests_mock, token_endpoint, file_url, tmp_path, sleeps
    ):
        """Without ``readinto`` below urllib3, a broken body still gets the download's retry rules."""

        class BreakingBody(io.RawIOBase):
            """Returns ``head``, then raises ``failure``; it has ``read`` only, no ``readinto``."""

            def __init__(self, head: bytes) -> None:
                self._head = head

            def readable(self) -> bool:
                return True

            def read(self, size=-1):
                if not self._head:
                    raise failure
                part, self._head = self._head[:size], self._head[size:]
                return part

            def __getattribute__(self, name):
                if name == "readinto":
                    raise AttributeError(name)
                return super().__getattribute__(name)

        requests_mock.get(file_url, [{"body": BreakingBody(BODY[:20])} for _ in range(3)])
        monkeypatch.setattr(sepa_export, "_read_into", None)  # fails the test if the readinto path is taken

        with pytest.raises(SepaExportDownloadError, match=reason) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        assert "after 3 attempts" in str(caught.value)
        assert files_in(tmp_path) == []
        assert len(sleeps) == 2

    def test_staged_file_not_creatable(self, monkeypatch, hook, requests_mock, token_endpoint, file_url, tmp_path):
        def no_permission(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

        monkeypatch.setattr(sepa_export.tempfile, "mkstemp", no_permission)
        requests_mock.get(file_url, content=BODY)

        with pytest.raises(SepaExportDownloadError) as caught:
            hook.download_file(FILE_ID, str(tmp_path / "main.xml"))

        message = str(caught.value)
        assert f"staged file in {tmp_path} failed: Permission denied." in message
        assert f"for file {FILE_ID}" in message
        assert "fix the folder's permissions" in message
        assert requests_mock.last_request.url == file_url
