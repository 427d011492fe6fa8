"""The body of an upload to an Animal Farm service: multipart/form-data with the image as part `file` (spec §2.2)."""

from __future__ import annotations

from collections.abc import Mapping


def multipart_body(boundary: str, fields: Mapping[str, str], data: bytes, *, filename: str, mime: str) -> bytes:
    """A multipart/form-data body (RFC 7578): the form fields, then the image as part `file`; one bytes object, so
    the upload is one send after the headers' (no encoder iterating over parts per request)."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"\r\n\r\n'.encode()
             + value.encode() + b"\r\n" for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quoted(filename)}"\r\n'
                 f"Content-Type: {mime}\r\n\r\n".encode())
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts)


def _quoted(name: str) -> str:
    """A name inside a quoted header parameter, escaped as browsers do (WHATWG HTML: multipart/form-data)."""
    return name.replace("\"", "%22").replace("\r", "%0D").replace("\n", "%0A")
