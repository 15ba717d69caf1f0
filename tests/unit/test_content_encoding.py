"""Tests of the content-encoding rules and of BodyDecoder, without HTTP."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from airflow_provider_sepa.core.content_encoding import (
    OUTPUT_CHUNK_SIZE,
    BodyDecoder,
    BodyDecodingError,
    UnsupportedEncodingError,
    parse_content_encoding,
)

DATA = b"<Document>" + os.urandom(3000).hex().encode() + b"</Document>"


def decode_all(decoder: BodyDecoder, wire: bytes, piece: int) -> bytes:
    """Feed ``wire`` in pieces of ``piece`` bytes and return the decoded bytes, checking the end."""
    out = bytearray()
    for start in range(0, len(wire), piece):
        for chunk in decoder.decode(wire[start : start + piece]):
            out += chunk
    decoder.finish()
    return bytes(out)


class TestParseContentEncoding:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            (None, None),
            ("", None),
            ("identity", None),
            (" Identity ", None),
            ("gzip", "gzip"),
            ("x-gzip", "gzip"),
            ("GZIP", "gzip"),
            ("deflate", "deflate"),
        ],
    )
    def test_known_encodings(self, header, expected):
        assert parse_content_encoding(header) == expected

    @pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, gzip", "gzip,deflate", "chunked"])
    def test_other_encodings_rejected(self, header):
        with pytest.raises(UnsupportedEncodingError) as caught:
            parse_content_encoding(header)

        assert repr(header) in str(caught.value)
        assert "'gzip, deflate'" in str(caught.value)


class TestBodyDecoder:
    @pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
    @pytest.mark.parametrize(
        ("encoding", "compress"),
        [
            ("gzip", gzip.compress),
            ("deflate", zlib.compress),
            ("deflate", lambda data: zlib.compress(data)[2:-4]),
        ],
        ids=["gzip", "deflate-zlib", "deflate-raw"],
    )
    def test_decodes_in_any_pieces(self, encoding, compress, piece):
        assert decode_all(BodyDecoder(encoding), compress(DATA), piece) == DATA

    def test_output_bounded_per_step(self):
        # 64 MiB of zeros compress to about 64 KiB: one input piece must not become one huge output.
        wire = gzip.compress(bytes(64 * 1024 * 1024))
        decoder = BodyDecoder("gzip")
        sizes = [len(chunk) for chunk in decoder.decode(wire)]
        decoder.finish()

        assert max(sizes) == OUTPUT_CHUNK_SIZE
        assert sum(sizes) == 64 * 1024 * 1024

    def test_gzip_members_in_one_piece(self):
        wire = gzip.compress(b"first ") + gzip.compress(b"second")

        assert decode_all(BodyDecoder("gzip"), wire, len(wire)) == b"first second"

    def test_empty_body_is_empty(self):
        decoder = BodyDecoder("gzip")

        assert list(decoder.decode(b"")) == []
        decoder.finish()

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    def test_cut_stream_raised_at_finish(self, encoding):
        wire = (gzip.compress if encoding == "gzip" else zlib.compress)(DATA)
        decoder = BodyDecoder(encoding)
        for _ in decoder.decode(wire[: len(wire) // 2]):
            pass

        with pytest.raises(BodyDecodingError, match="ended before the end of its compressed stream"):
            decoder.finish()

    def test_gzip_cut_in_trailer_raised(self):
        # Only the last bytes of the trailer (CRC-32 and size) are missing; every data byte arrived.
        wire = gzip.compress(DATA)[:-3]

        with pytest.raises(BodyDecodingError, match="ended before the end"):
            decode_all(BodyDecoder("gzip"), wire, 100)

    def test_gzip_checksum_mismatch_raised(self):
        wire = bytearray(gzip.compress(DATA))
        wire[-8] ^= 0xFF  # the CRC-32 in the trailer

        with pytest.raises(BodyDecodingError, match="gzip body is invalid"):
            decode_all(BodyDecoder("gzip"), bytes(wire), 100)

    def test_data_after_deflate_end_raised(self):
        wire = zlib.compress(DATA) + b"x"

        with pytest.raises(BodyDecodingError, match="data after the end"):
            decode_all(BodyDecoder("deflate"), wire, 64)

    def test_invalid_encoding_name(self):
        with pytest.raises(ValueError, match="Invalid encoding 'br'"):
            BodyDecoder("br")

    def test_one_byte_deflate_body_raised(self):
        decoder = BodyDecoder("deflate")

        assert list(decoder.decode(b"x")) == []
        with pytest.raises(BodyDecodingError, match="ended before the end"):
            decoder.finish()

    def test_gzip_zero_padding_skipped(self):
        wire = gzip.compress(DATA) + bytes(1000)

        assert decode_all(BodyDecoder("gzip"), wire, 300) == DATA

    def test_gzip_data_after_padding_raised(self):
        wire = gzip.compress(DATA) + bytes(10) + b"x"

        with pytest.raises(BodyDecodingError, match="data after the zero bytes"):
            decode_all(BodyDecoder("gzip"), wire, 5)

    def test_gzip_member_after_member_not_padding(self):
        wire = gzip.compress(b"a") + gzip.compress(b"b") + bytes(3)

        assert decode_all(BodyDecoder("gzip"), wire, 1) == b"ab"

    def test_zeros_then_member_across_reads_raised(self):
        """Zero padding ends the body: a member after it, even in a later read, is an error."""
        decoder = BodyDecoder("gzip")
        list(decoder.decode(gzip.compress(b"a") + bytes(4)))

        with pytest.raises(BodyDecodingError, match="data after the zero bytes"):
            list(decoder.decode(gzip.compress(b"b")))

    def test_deflate_zero_padding_raised(self):
        with pytest.raises(BodyDecodingError, match="data after the end"):
            decode_all(BodyDecoder("deflate"), zlib.compress(DATA) + bytes(8), 64)
