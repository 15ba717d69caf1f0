"""Destination handling and the record of a downloaded file."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from airflow_provider_sepa.core.errors import SepaExportInputError

#: Schemes that mean the worker's local file system.
LOCAL_SCHEMES = ("file", "local")

_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class DownloadedFile:
    """A file written to its destination.

    :param path: the destination path or object-storage URL.
    :param size_bytes: number of bytes written, equal to the response body.
    :param sha256: hex SHA-256 digest of those bytes.
    :param file_id: the API's file id.
    """

    path: str
    size_bytes: int
    sha256: str
    file_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-compatible values for XCom."""
        return asdict(self)


def default_file_name(file_id: str) -> str:
    """Return the file name used when the destination is a folder: ``<file id>.xml``, made path-safe."""
    return _UNSAFE_NAME_CHARACTERS.sub("_", file_id) + ".xml"


def check_destination(destination: Any) -> str:
    """Check that a destination is an absolute local path or an object-storage URL.

    :raises SepaExportInputError: for an empty value, a relative path (which would land in
        whatever folder the worker happens to run in) or an http(s) URL.
    """
    text = str(destination) if destination is not None else ""
    if not text.strip():
        raise SepaExportInputError(
            "Invalid destination '': pass an absolute path such as /data/sepa/main.xml or a storage URL "
            "such as s3://aws_default@bucket/sepa/main.xml."
        )
    if "\x00" in text:
        raise SepaExportInputError(f"Invalid destination {text!r}: it contains a NUL character.")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            raise SepaExportInputError(
                f"Invalid destination {text!r}: http(s) URLs are not storage locations. Use a local path "
                "or an object-storage URL such as s3://, gs:// or file://."
            )
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
            raise SepaExportInputError(f"Invalid destination {text!r}: {scheme!r} is not a URL scheme.")
        return text
    if not text.startswith("/"):
        raise SepaExportInputError(
            f"Invalid destination {text!r}: use an absolute path, because a relative one would depend on the "
            "worker's current folder. For example /data/sepa/" + text.lstrip("./")
        )
    return text
