"""Image uploads in a multipart/form-data body, read as it streams in.

POST /v1/jobs as multipart carries one or more images in parts named `file` (the other parts
are short text fields). The body is never read whole first: a Content-Length past what the
limits allow is refused before a byte of it is read, and each file is counted as it arrives,
so the first byte past UPLOAD_MAX_BYTES answers 413 while the client is still sending (the
connection is closed: the rest is never read). Only what is accepted is held: at most
MAX_FILES images of UPLOAD_MAX_BYTES each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from services.gateway.problems import FieldError, Problem

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
# Images per request: what one request may make the gateway hold (with UPLOAD_MAX_BYTES each).
MAX_FILES = 16
# The text fields beside the files (options such as top_k): how many, and how long each.
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
# What a part costs besides its content (boundary, headers), and the body's closing line:
# generous, since it only bounds the Content-Length refused before reading.
PART_OVERHEAD = 8 * 1024
CLOSE = {"Connection": "close"}  # a refused body's rest is never read


class UploadLimits(Protocol):
    """What read_files needs of the settings (services.gateway.settings.GatewaySettings has it)."""

    @property
    def upload_max_bytes(self) -> int: ...


@dataclass
class UploadForm:
    """A multipart body read: its files (filename, bytes) in order, and its text fields."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


async def read_files(request: Request, settings: UploadLimits) -> list[tuple[str, bytes]]:
    """The images (filename, bytes) of a multipart/form-data body's `file` parts, in order.
    Raises a 413 Problem as soon as the Content-Length or one file passes the limits, 422 for
    no file or an empty one, 400 for a body that is not multipart."""
    return (await read_form(request, settings)).files


async def read_form(
    request: Request, settings: UploadLimits, *, max_files: int = MAX_FILES
) -> UploadForm:
    """read_files, with the text fields too."""
    limit = settings.upload_max_bytes
    boundary = _boundary(request.headers.get("content-type", ""))
    allowed = max_files * (limit + PART_OVERHEAD) + MAX_FIELDS * (MAX_FIELD_BYTES + PART_OVERHEAD)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > allowed:
        raise Problem(
            413,
            f"the body announces {length} bytes, more than {max_files} images of at most "
            f"{limit} bytes (UPLOAD_MAX_BYTES) can take; nothing was read",
            headers=CLOSE,
        )
    reader = _Reader(limit, max_files)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)  # the callbacks raise the moment a limit is passed
        parser.finalize()
    except FormParserError as exc:
        raise Problem(400, f"the multipart body is malformed: {exc}") from None
    return reader.finish()


def _boundary(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise Problem(400, "expected a multipart/form-data body with a boundary")
    return boundary


class _Reader:
    """The parser's callbacks: each part's name, filename and content, counted as it comes."""

    def __init__(self, limit: int, max_files: int) -> None:
        self.limit = limit
        self.max_files = max_files
        self.form = UploadForm()
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._name = ""
        self._filename = ""
        self._data = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _begin(self) -> None:
        self._disposition, self._data = b"", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise Problem(400, "a multipart part has no name (Content-Disposition)")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._filename = options.get(b"filename", b"").decode("utf-8", "replace")
        if self._name == FILE_FIELD and len(self.form.files) >= self.max_files:
            raise Problem(413, f"more than {self.max_files} files in one request", headers=CLOSE)
        if self._name != FILE_FIELD and len(self.form.fields) >= MAX_FIELDS:
            raise Problem(413, f"more than {MAX_FIELDS} fields in one request", headers=CLOSE)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]
        if self._name == FILE_FIELD and len(self._data) > self.limit:
            index = len(self.form.files)
            raise Problem(
                413,
                f"file #{index + 1} ({self._filename!r}) is over UPLOAD_MAX_BYTES "
                f"({self.limit} bytes); nothing was read past that",
                headers=CLOSE,
            )
        if self._name != FILE_FIELD and len(self._data) > MAX_FIELD_BYTES:
            raise Problem(
                413, f"field {self._name!r} is over {MAX_FIELD_BYTES} bytes", headers=CLOSE
            )

    def _part_end(self) -> None:
        if self._name == FILE_FIELD:
            self.form.files.append((self._filename, bytes(self._data)))
        else:
            self.form.fields[self._name] = self._data.decode("utf-8", "replace")
        self._data = bytearray()

    def finish(self) -> UploadForm:
        files = self.form.files
        if not files:
            error = FieldError(field=FILE_FIELD, message="no image: send it in a part named file")
            raise Problem(422, error.message, errors=[error])
        for index, (name, data) in enumerate(files):
            if not data:
                error = FieldError(field=f"{FILE_FIELD}.{index}", message=f"{name!r} is empty")
                raise Problem(422, error.message, type="InvalidSource", errors=[error])
        return self.form
