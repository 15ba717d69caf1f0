"""HTTP content encodings of a downloaded file: which ones are accepted, and a decoder that checks the end.

urllib3 decodes gzip and deflate bodies but does not check that the compressed stream
ended (checked with urllib3 2.8), so a body cut inside the stream but complete at the
HTTP level would pass as a shorter file. The decoder here raises instead.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

#: The Accept-Encoding header of a download request: exactly the encodings decoded here.
ACCEPT_ENCODING = "gzip, deflate"
#: Bytes of decoded output per step, so that a highly compressed body cannot fill the memory.
OUTPUT_CHUNK_SIZE = 64 * 1024

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class UnsupportedEncodingError(ValueError):
    """The response has a Content-Encoding that the download cannot decode."""


class BodyDecodingError(ValueError):
    """The compressed body is invalid, ends inside its stream, or has data after its end."""


def parse_content_encoding(header: str | None) -> str | None:
    """Return ``"gzip"`` or ``"deflate"`` for a Content-Encoding header, or ``None`` for no encoding.

    :raises UnsupportedEncodingError: for any other encoding, or for several encodings.
    """
    value = (header or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value in ("gzip", "x-gzip"):
        return "gzip"
    if value == "deflate":
        return "deflate"
    raise UnsupportedEncodingError(
        f"the response has Content-Encoding {header!r}, which the download cannot decode. The request asked "
        f"for {ACCEPT_ENCODING!r} only, so a proxy between the worker and the API may have changed it."
    )


class BodyDecoder:
    """Decode a gzip or deflate body piece by piece and check that its stream is complete.

    A gzip body may hold several members one after the other, as gzip files may. A deflate
    body may come with the zlib wrapper, as RFC 9110 defines it, or without it, as some
    servers send it.
    """

    def __init__(self, encoding: str) -> None:
        if encoding not in ("gzip", "deflate"):
            raise ValueError(f"Invalid encoding {encoding!r}: use 'gzip' or 'deflate'.")
        self._encoding = encoding
        self._decompressor: zlib._Decompress | None = None
        # True while the last step filled its output chunk, so zlib may hold more output.
        self._output_may_remain = False
        # The first byte of a deflate body, kept until the second arrives, because the zlib header check needs both.
        self._first_byte = b""
        # True once zero bytes followed the end of a gzip member, which gzip(1) also accepts.
        self._in_padding = False

    def decode(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Yield the decoded bytes of the next part of the body, at most OUTPUT_CHUNK_SIZE at a time.

        :raises BodyDecodingError: when the data is not valid for the encoding, or follows
            the end of a deflate stream.
        """
        pending: bytes | memoryview = data
        if self._encoding == "deflate" and self._decompressor is None and pending:
            pending = self._first_byte + bytes(pending)
            if len(pending) < 2:
                self._first_byte = bytes(pending)
                return
            self._first_byte = b""
        while pending or self._output_may_remain:
            if self._skip_padding(pending):
                return
            decompressor = self._decompressor_for(pending)
            try:
                piece = decompressor.decompress(pending, OUTPUT_CHUNK_SIZE)
            except zlib.error as error:
                raise BodyDecodingError(f"the {self._encoding} body is invalid: {error}") from error
            if piece:
                yield piece
            pending = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            self._output_may_remain = not decompressor.eof and len(piece) == OUTPUT_CHUNK_SIZE

    def finish(self) -> None:
        """Check that the body ended with the end of its compressed stream.

        An empty body counts as an empty file, as servers send it for empty content.

        :raises BodyDecodingError: when the body ended inside the compressed stream.
        """
        if self._first_byte or (self._decompressor is not None and not self._decompressor.eof):
            raise BodyDecodingError(f"the {self._encoding} body ended before the end of its compressed stream")

    def _skip_padding(self, data: bytes | memoryview) -> bool:
        """Return whether ``data`` is zero padding after the last gzip member."""
        current = self._decompressor
        if self._encoding != "gzip" or current is None or not current.eof:
            return False
        if not self._in_padding and bytes(data[:1]) != b"\x00":
            return False  # the next gzip member
        if bytes(data).strip(b"\x00"):
            raise BodyDecodingError("the gzip body has data after the zero bytes that follow its last member")
        self._in_padding = True
        return True

    def _decompressor_for(self, data: bytes | memoryview) -> zlib._Decompress:
        current = self._decompressor
        if current is not None and not current.eof:
            return current
        if current is not None and self._encoding == "deflate":
            raise BodyDecodingError("the deflate body has data after the end of its compressed stream")
        # The first gzip member, a further member, or the only deflate stream.
        self._decompressor = zlib.decompressobj(self._wbits(data))
        return self._decompressor

    def _wbits(self, data: bytes | memoryview) -> int:
        if self._encoding == "gzip":
            return _GZIP_WBITS
        header = bytes(data[:2])
        # A zlib header: compression method 8 in the low nibble, and the two bytes a multiple of 31.
        if len(header) == 2 and header[0] & 0x0F == 8 and int.from_bytes(header, "big") % 31 == 0:
            return _ZLIB_WBITS
        return _RAW_DEFLATE_WBITS
