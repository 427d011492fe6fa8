"""The stand-in takes plain multipart bodies apart itself and leaves the rest to python-multipart: whichever parses
a body, the fields and files (or the refusal) are python-multipart's."""

from __future__ import annotations

import random

import httpx
import pytest

from windmill.farm.multipart import multipart_body
from windmill.simfarm.inputs import MalformedRequest, _parse_multipart, _parse_plain_multipart, parse_body

BOUNDARY = "windmill-0123456789abcdef"
IMAGE = bytes(range(256)) * 40


def _outcome(parse: object, boundary: bytes, body: bytes) -> object:
    try:
        return parse(boundary, body)  # type: ignore[operator]  # one of the two parsers
    except MalformedRequest:
        return "malformed"


def _part(name: str, data: bytes, *, filename: str | None = None, extra: list[bytes] | None = None,
          separator: bytes = b": ") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    lines = [b"Content-Disposition" + separator + disposition.encode(), *(extra or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def _body(parts: list[bytes], boundary: bytes, *, preamble: bytes = b"", ending: bytes = b"--\r\n") -> bytes:
    return (preamble + b"--" + boundary + b"\r\n" + (b"\r\n--" + boundary + b"\r\n").join(parts)
            + b"\r\n--" + boundary + ending)


def _variants(rng: random.Random) -> list[tuple[bytes, bytes]]:
    boundary = BOUNDARY.encode()
    plain = _part("file", IMAGE, filename="image.jpg", extra=[b"Content-Type: image/jpeg"])
    caption = _part("caption", "a café at night".encode())
    bodies = [
        multipart_body(BOUNDARY, {}, IMAGE, filename="image.jpg", mime="image/jpeg"),
        multipart_body(BOUNDARY, {"caption": "two dogs", "regions": "4"}, IMAGE, filename="x.png", mime="image/png"),
        _body([plain], boundary, ending=b"--"),  # no CRLF after the closing delimiter
        _body([caption, plain, _part("file", b"second", filename="b.jpg")], boundary),  # the first file wins
        _body([plain], boundary, preamble=b"a preamble\r\n"),
        _body([plain], boundary, ending=b"--\r\nan epilogue"),
        _body([plain], boundary, ending=b"\r\n"),  # never closed
        _body([_part("file", IMAGE, filename="a.jpg", separator=b":")], boundary),  # no blank after the colon
        _body([_part("file", IMAGE, filename="a.jpg", separator=b":   ")], boundary),
        _body([_part("file", IMAGE, filename="a.jpg", extra=[b"X-Header-2: digits in the name"])], boundary),
        _body([_part("file", IMAGE, filename="a.jpg", extra=[b"X-Odd: a\nline feed"])], boundary),
        _body([_part("file", IMAGE, filename="a.jpg", extra=[b"X-Odd: a\rcarriage return"])], boundary),
        _body([_part("file", IMAGE, filename="a.jpg", extra=[b"X-Many: yes"] * 9)], boundary),
        _body([_part("file", IMAGE, filename="a.jpg", extra=[b"X-Long: " + b"x" * 5000])], boundary),
        _body([_part("file", b"data\r\n--" + boundary + b"X and more", filename="a.jpg")], boundary),
        _body([_part("file", b"data\r\n--" + boundary[:-1], filename="a.jpg")], boundary),
        _body([b"\r\nno headers at all"], boundary),
        _body([_part("file", b"", filename="")], boundary),
        _body([_part("na\xefve".encode("latin-1").decode("latin-1"), b"field")], boundary),
        _body([plain], b"another-boundary"),
        b"",
        b"--" + boundary + b"--\r\n",
    ]
    long_boundary = b"b" * 300
    bodies.append(_body([plain], long_boundary))
    variants = [(boundary, body) for body in bodies[:-1]] + [(long_boundary, bodies[-1])]
    # Cut-off and bit-flipped copies of a plain body.
    whole = bodies[1]
    for _ in range(60):
        cut = rng.randrange(len(whole))
        variants.append((boundary, whole[:cut]))
        flipped = bytearray(whole)
        flipped[rng.randrange(min(len(whole), 200))] ^= 1 << rng.randrange(8)
        variants.append((boundary, bytes(flipped)))
    return variants


def test_every_body_parses_as_python_multipart_parses_it() -> None:
    variants = _variants(random.Random(7))
    plain = 0
    for boundary, body in variants:
        try:
            expected = _outcome(_parse_multipart, boundary, body)
        except Exception as error:  # python-multipart refuses the boundary itself
            expected = type(error)
        content_type = f"multipart/form-data; boundary={boundary.decode()}"
        try:
            parsed = parse_body(content_type, body)
            actual: object = (parsed.fields, parsed.files)
        except MalformedRequest:
            actual = "malformed"
        except Exception as error:
            actual = type(error)
        assert actual == expected, body[:120]
        plain += _parse_plain_multipart(boundary, body) is not None
    assert plain >= 5  # the plain shapes are taken apart without python-multipart


@pytest.mark.parametrize("fields", [{}, {"caption": "a red bus"}])
def test_an_httpx_upload_is_a_plain_body(fields: dict[str, str]) -> None:
    request = httpx.Request("POST", "http://farm/analyze", files={"file": ("image.jpg", IMAGE, "image/jpeg")},
                            data=fields)
    body = request.read()
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    plain = _parse_plain_multipart(boundary, body)
    assert plain is not None
    assert plain == _parse_multipart(boundary, body)
    assert plain[1]["file"].data == IMAGE
