"""Tests of destination checks, default file names and the downloaded-file record."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sepa.core.errors import SepaExportInputError
from airflow_provider_sepa.core.files import DownloadedFile, check_destination, default_file_name


class TestCheckDestination:
    @pytest.mark.parametrize(
        "destination",
        [
            "/data/sepa/main.xml",
            "/data/sepa/",
            "s3://aws_default@bucket/sepa/main.xml",
            "gs://bucket/x.xml",
            "file:///tmp/x.xml",
        ],
        ids=["absolute", "absolute-folder", "s3-with-conn", "gcs", "file-url"],
    )
    def test_check_destination_valid(self, destination):
        assert check_destination(destination) == destination

    @pytest.mark.parametrize(
        ("destination", "message"),
        [
            (None, "Invalid destination ''"),
            ("", "Invalid destination ''"),
            ("   ", "Invalid destination ''"),
            ("main.xml", "use an absolute path"),
            ("./out/main.xml", "use an absolute path"),
            ("../main.xml", "use an absolute path"),
            ("~/main.xml", "use an absolute path"),
            ("http://example.test/upload", "are not storage locations"),
            ("HTTPS://example.test/upload", "are not storage locations"),
            ("1bad://x", "is not a URL scheme"),
            ("/data/ma\x00in.xml", "NUL character"),
        ],
        ids=[
            "none",
            "empty",
            "blank",
            "bare-name",
            "dot-relative",
            "parent-relative",
            "tilde",
            "http",
            "https-uppercase",
            "bad-scheme",
            "nul",
        ],
    )
    def test_check_destination_invalid(self, destination, message):
        with pytest.raises(SepaExportInputError, match=message):
            check_destination(destination)

    def test_check_destination_relative_suggests_absolute(self):
        with pytest.raises(SepaExportInputError, match=r"For example /data/sepa/out/main\.xml"):
            check_destination("./out/main.xml")


class TestDefaultFileName:
    @pytest.mark.parametrize(
        ("file_id", "expected"),
        [
            ("file-0001", "file-0001.xml"),
            ("a/b", "a_b.xml"),
            ("../x", ".._x.xml"),
            ("ü x", "__x.xml"),
            ("v1.2_final", "v1.2_final.xml"),
        ],
        ids=["plain", "slash", "dot-dot-slash", "non-ascii-space", "dots-underscore"],
    )
    def test_default_file_name(self, file_id, expected):
        assert default_file_name(file_id) == expected


class TestDownloadedFile:
    def test_downloaded_file_to_dict(self):
        record = DownloadedFile(path="/data/main.xml", size_bytes=3, sha256="ab" * 32, file_id="file-1")

        data = record.to_dict()

        assert data == {"path": "/data/main.xml", "size_bytes": 3, "sha256": "ab" * 32, "file_id": "file-1"}
        assert json.loads(json.dumps(data)) == data
