"""Where the image comes from (contract §2.2): a multipart upload, `?url=` or `?file=`, with the exact 400s."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from windmill.errors import MissingExtra
from windmill.simfarm.contract import ALLOWED_EXTENSIONS, MAX_IMAGE_BYTES, Profile

try:  # an optional dependency: the stand-in serves tests, the demo and the benchmarks, not production
    from python_multipart import MultipartParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:
    raise MissingExtra("The Animal Farm stand-in (farm serve, the demo, the benchmarks)", "python-multipart",
                       "simfarm") from None

# A client sends the same Content-Type (its boundary) and the same part headers request after request, and
# python-multipart parses such a header in Python, character by character (a tenth of the stand-in's CPU per
# cached answer). The parsed options are shared between requests: read them, never change them.
_options_header = functools.lru_cache(maxsize=1024)(parse_options_header)


class ContractError(Exception):
    """An input problem the service answers with its V3 error envelope."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MalformedRequest(Exception):
    """A body that cannot be parsed (Flask's `Bad request`)."""


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass
class RequestData:
    """Query string, form fields, file parts and (for /score) a JSON body; the first value of a name wins."""

    query: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)
    json_body: dict[str, object] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        """A parameter from the JSON body, a form field or the query string (ollama, colors, /score)."""
        for source in (self.json_body, self.fields, self.query):
            value = source.get(name)
            if isinstance(value, str) and value != "":
                return value
        return None


@dataclass(frozen=True)
class Picture:
    """Image bytes as received, named by their SHA-256."""

    data: bytes
    source: str  # "upload", "url" or "file"
    path: Path | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())


def first_values(query_string: str) -> dict[str, str]:
    parsed = parse_qs(query_string, keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def parse_body(content_type: str, body: bytes) -> RequestData:
    """Form fields and files of a POST body (and a JSON object, read silently: bad JSON counts as none).

    Raises MalformedRequest when a multipart body does not parse (Flask's `Bad request`).
    """
    data = RequestData()
    media_type, options = _options_header(content_type)
    if media_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedRequest("multipart body without a boundary")
        data.fields, data.files = _parse_plain_multipart(boundary, body) or _parse_multipart(boundary, body)
    elif media_type == b"application/x-www-form-urlencoded":
        data.fields = first_values(body.decode("utf-8", "replace"))
    elif media_type == b"application/json":
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if isinstance(document, dict):
            data.json_body = document
    return data


# A multipart body as clients send it (FarmClient, httpx, curl) is taken apart with bytes.find: python-multipart's
# parser runs its state machine in Python and calls back per header and chunk, a quarter of the stand-in's cost of
# serving an answer. Anything unusual (a preamble, an epilogue, an odd header line, a boundary-like line inside a
# part) goes to python-multipart, which decides: the plain parse gives what python-multipart gives, or nothing.
_PLAIN_HEADER_NAME = re.compile(rb"[A-Za-z-]+")  # letters and hyphens: names python-multipart takes as they are
_PLAIN_HEADERS = 4  # python-multipart allows 8 header lines per part
_PLAIN_HEADER_LINE = 1024  # ... of up to 4,224 bytes
_PLAIN_BOUNDARY = 70  # RFC 2046's longest boundary; python-multipart refuses some longer ones


def _parse_plain_multipart(boundary: bytes, body: bytes) -> tuple[dict[str, str], dict[str, Upload]] | None:
    """Fields and files of a body of plain parts (`--boundary CRLF`, at most four `Name: value` header lines, a blank
    line, the data, ... `--boundary--` and an optional CRLF), or None for any other body."""
    opening = b"--" + boundary + b"\r\n"
    if len(boundary) > _PLAIN_BOUNDARY or not body.startswith(opening):
        return None
    delimiter = b"\r\n--" + boundary
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    position = len(opening)
    while True:
        end = body.find(delimiter, position)
        headers_end = body.find(b"\r\n\r\n", position, end)
        if end < 0 or headers_end <= position:
            return None
        headers: dict[bytes, bytes] = {}
        lines = body[position:headers_end].split(b"\r\n")
        if len(lines) > _PLAIN_HEADERS:
            return None
        for line in lines:
            name, colon, value = line.partition(b": ")
            if (not colon or len(line) > _PLAIN_HEADER_LINE or not _PLAIN_HEADER_NAME.fullmatch(name)
                    or value[:1] == b" " or b"\r" in value or b"\n" in value):
                return None
            headers[name.lower()] = value
        _add_part(headers, body[headers_end + 4:end], fields, files)
        position = end + len(delimiter) + 2
        after = body[end + len(delimiter):position]
        if after == b"--" and body[position:] in (b"", b"\r\n"):
            return fields, files
        if after != b"\r\n":
            return None


def _add_part(headers: dict[bytes, bytes], content: bytes, fields: dict[str, str], files: dict[str, Upload]) -> None:
    """A part's value under its name, the first of a name kept: a file (it has a filename) or a text field."""
    _, disposition = _options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
    name = disposition.get(b"name", b"").decode("utf-8", "replace")
    if b"filename" in disposition:
        files.setdefault(name, Upload(disposition[b"filename"].decode("utf-8", "replace"), content))
    else:
        fields.setdefault(name, content.decode("utf-8", "replace"))


def _parse_multipart(boundary: bytes, body: bytes) -> tuple[dict[str, str], dict[str, Upload]]:
    """Any multipart body, by python-multipart's parser."""
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    headers: dict[bytes, bytes] = {}
    header_name: list[bytes] = []
    header_value: list[bytes] = []
    chunks: list[bytes] = []

    def on_part_begin() -> None:
        headers.clear()
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        headers[b"".join(header_name).lower()] = b"".join(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        _add_part(headers, b"".join(chunks), fields, files)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise MalformedRequest(str(error)) from None
    return fields, files


def _allowed(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in ALLOWED_EXTENSIONS


class Downloader:
    """`?url=` fetching as the services do it: a timeout, an 8 MiB cap, optional `image/*` check."""

    def __init__(self) -> None:
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:  # made on first use: most runs never download
                self._client = httpx.Client(follow_redirects=True)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def fetch(self, profile: Profile, url: str, *, failure: tuple[int, str] | None = None) -> bytes:
        status, prefix = failure or profile.download_failure
        if profile.url_image_check:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ContractError(400, "Invalid URL format")
        try:
            with self._http().stream("GET", url, timeout=profile.download_timeout_s) as response:
                if response.status_code >= 400:
                    kind = "Client" if response.status_code < 500 else "Server"
                    raise ContractError(
                        status, f"{prefix}{response.status_code} {kind} Error: {response.reason_phrase} for url: {url}"
                    )
                if profile.url_image_check and not response.headers.get("content-type", "").startswith("image/"):
                    raise ContractError(400, "URL does not point to an image")
                received = bytearray()
                for chunk in response.iter_bytes():
                    received += chunk
                    if len(received) > MAX_IMAGE_BYTES:
                        raise ContractError(400, "Downloaded file too large")
                return bytes(received)
        except httpx.InvalidURL as error:
            raise ContractError(status, f"{prefix}Invalid URL {url!r}: {error}") from None
        except httpx.HTTPError as error:
            raise ContractError(status, f"{prefix}{error}") from None


def read_local(profile: Profile, name: str) -> bytes:
    """`?file=`: the path is on this host; two-stage detectors answer a missing file with a 500."""
    if profile.file_extension_check and not _allowed(name):
        raise ContractError(400, "File type not allowed")
    path = Path(name)
    if not path.is_file():
        if profile.two_stage:
            raise ContractError(500, f"Failed to load image file: File not found: {name}")
        raise ContractError(400, f"File not found: {name}")
    if profile.file_size_check and path.stat().st_size > MAX_IMAGE_BYTES:
        raise ContractError(400, "File too large")
    try:
        return path.read_bytes()
    except OSError as error:
        raise ContractError(500, f"Failed to load image file: {error.strerror}") from None


def resolve(profile: Profile, method: str, request: RequestData, downloader: Downloader) -> Picture:
    """Exactly one of upload, `url`, `file` (§2.2), or the service's 400."""
    upload = request.files.get("file") if method == "POST" else None
    if upload is not None:
        if not upload.filename:
            raise ContractError(400, "No file selected")
        if profile.upload_extension_check and not _allowed(upload.filename):
            raise ContractError(400, "File type not allowed")
        if len(upload.data) > MAX_IMAGE_BYTES:
            raise ContractError(400, "File too large. Maximum size: 8MB")
        return Picture(upload.data, "upload")
    if method == "POST" and profile.strict_post:
        raise ContractError(400, "No file provided in POST request")
    url = request.query.get("url") or None
    file = request.query.get("file") or None
    if url and file:
        raise ContractError(400, profile.both_inputs_message)
    if url:
        return Picture(downloader.fetch(profile, url), "url")
    if file:
        return Picture(read_local(profile, file), "file", Path(file))
    raise ContractError(400, profile.missing_input_message)


def resolve_for_score(profile: Profile, method: str, request: RequestData, downloader: Downloader, *,
                      uploads: bool = False) -> Picture:
    """/score (§3.4): `url` or `file` from query, form or JSON. A multipart upload is not supported at df57b25: its
    image part is not read, so without `url` or `file` the request is the 400 of neither. With `uploads`, as the
    clip-score service of 2026 (spec §8), a multipart `file` is taken too."""
    upload = request.files.get("file") if uploads and method == "POST" else None
    url = request.param("url")
    file = request.param("file") if upload is None else None
    if sum(1 for given in (upload, url, file) if given) > 1:
        raise ContractError(400, "Cannot provide both url and file parameters")
    if upload is not None:
        if not upload.filename or not _allowed(upload.filename):
            raise ContractError(400, "File type not allowed")
        if len(upload.data) > MAX_IMAGE_BYTES:
            raise ContractError(400, "File too large")
        return Picture(upload.data, "upload")
    if url:
        data = downloader.fetch(profile, url, failure=(400, "Failed to process image URL: "))
        return Picture(data, "url")
    if file:
        path = Path(file)
        if not path.is_file():
            raise ContractError(400, f"File not found: {file}")
        if not _allowed(file):
            raise ContractError(400, "File type not allowed")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise ContractError(400, "File too large")
        return Picture(path.read_bytes(), "file", path)
    raise ContractError(400, "Must provide either url or file parameter")


def undecodable(profile: Profile, source: str, detail: str) -> ContractError:
    """The error an image that does not decode gets, by input mode and service (§2.4)."""
    if source == "url":
        status, prefix = profile.download_failure
        return ContractError(400 if profile.strict_post else status, f"{prefix}{detail}")
    if source == "file":
        status = 400 if profile.strict_post or profile.analyzer == "blip" else 500
        return ContractError(status, f"Failed to load image file: {detail}")
    if profile.analyzer == "blip":
        return ContractError(500, f"Internal error: {detail}")
    return ContractError(400 if profile.strict_post else 500, f"Failed to process uploaded image: {detail}")
