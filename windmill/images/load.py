"""Loading an image's bytes from its path or URL, inside the limits that keep a worker safe.

A path must stay inside the configured image roots (after resolving `..` and symlinks) and be a
regular file; a URL must be http(s), and unless private addresses are allowed, every address its
host resolves to must be public. The download connects to the address that was checked (so a DNS
answer cannot change between the check and the connection), follows a bounded number of
redirects, re-checking each hop, and stops at the size cap. Every refusal is a `BadImage`; a download that failed
for a reason that may pass (HTTP 5xx, 429 or 408, a timeout, a connection refused or broken, a DNS server not
answering) is an `ImageUnavailable`, which the task retries with backoff.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from windmill.images.deadline import ConnectionDeadline
from windmill.images.errors import BadImage, ImageUnavailable, describe_size

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 32 * MIB
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_REDIRECTS = 3
ALLOWED_SCHEMES = ("http", "https")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_PASSING_CODES = (408, 429)  # and every 5xx: the server may answer later
# Transport failures that may pass; the others (an unsupported protocol, a malformed request) will not.
_PASSING_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_USER_AGENT = "windmill-image-loader"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FileMissing(BadImage):
    """The path names nothing: the one path failure after which the image URL may still be tried (and the image's
    current path, a task's file having been renamed since it was queued)."""


def load_image_bytes(
    image_path: str | os.PathLike[str] | None,
    image_url: str | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    roots: Sequence[Path] | None = None,
    allow_private_urls: bool = False,
    http_client: httpx.Client | None = None,
) -> bytes:
    """The raw bytes of an image: from its path when it has one, else (or when that file is missing) its URL.

    Only a missing file falls back to the URL; a path refused for any other reason (outside the
    roots, a directory, unreadable, too large) fails at once, so a refusal is never masked.
    """
    if image_path is not None and str(image_path) != "":
        try:
            return read_image_file(image_path, max_bytes=max_bytes, roots=roots)
        except FileMissing:
            if not image_url:
                raise
    if not image_url:
        raise BadImage("the image has neither a path nor a URL")
    return download_image(
        image_url,
        max_bytes=max_bytes,
        timeout=timeout,
        max_redirects=max_redirects,
        allow_private_urls=allow_private_urls,
        http_client=http_client,
    )


# ---------------------------------------------------------------------------------------------
# Files


def resolve_image_path(image_path: str | os.PathLike[str], roots: Sequence[Path] | None = None) -> Path:
    """The absolute path of an image file, `..` and symlinks resolved (a relative one taken from the current
    directory); a `BadImage` when it cannot be resolved or, with roots, lands outside all of them. Whether the file
    exists is not judged here: a refusal must not reveal whether a file outside the roots exists."""
    shown = os.fspath(image_path)
    if "\x00" in shown:
        raise BadImage("the image path contains a NUL character")
    candidate = Path(shown)
    if not candidate.is_absolute():
        candidate = Path.cwd() / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as problem:  # symlink loops: RuntimeError before 3.13
        raise BadImage(f"cannot resolve image path {shown}: {_os_reason(problem)}") from None
    if roots and not _inside(resolved, roots):
        raise BadImage(f"image path {shown} is outside the allowed image roots")
    return resolved


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(Path(root).resolve()) for root in roots)


def _opened_inside(descriptor: int, resolved: Path, roots: Sequence[Path]) -> bool:
    """Whether the file open on `descriptor` lies inside the roots. The path was judged before it was opened, and
    O_NOFOLLOW guards its last component only: a directory on the way swapped for a symlink in between opens a
    file outside. So what was opened is judged: its path as the kernel knows it (Linux), else whether it is the
    file the judged path leads to when opened a component at a time, none of them followed as a symlink."""
    try:
        opened = os.readlink(f"/proc/self/fd/{descriptor}")
    except OSError:
        opened = ""
    if opened.startswith("/"):
        return _inside(Path(opened.removesuffix(" (deleted)")), roots)
    try:
        again = _open_without_symlinks(resolved)
    except OSError:  # a symlink on the way now: swapped since the check
        return False
    try:
        now, info = os.fstat(again), os.fstat(descriptor)
    finally:
        os.close(again)
    return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)


def _open_without_symlinks(path: Path) -> int:
    """Open the absolute `path` (one with no symlink left: resolved) from `/` one component at a time, each with
    O_NOFOLLOW, so a symlink anywhere on it fails the opening instead of being followed (comparing stat of the path
    after the fact would follow one swapped in meanwhile)."""
    no_follow = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    directory = os.open("/", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in path.parts[1:-1]:
            inner = os.open(part, no_follow | getattr(os, "O_DIRECTORY", 0), dir_fd=directory)
            os.close(directory)
            directory = inner
        return os.open(path.name, no_follow | getattr(os, "O_NONBLOCK", 0), dir_fd=directory)
    finally:
        os.close(directory)


def read_image_file(
    image_path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES, roots: Sequence[Path] | None = None
) -> bytes:
    """Read a regular file of at most `max_bytes`, confined to `roots` when any are given.

    A relative path is taken from the current directory. With roots, the path is resolved
    (`..` and every symlink followed) and must land inside one of them.
    """
    shown = os.fspath(image_path)
    resolved = resolve_image_path(image_path, roots)
    candidate = Path(shown) if Path(shown).is_absolute() else Path.cwd() / shown

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: the resolved path has no symlink
        # left, so one appearing now is a swap after the check.
        descriptor = os.open(resolved, flags)
    except FileNotFoundError:
        if candidate.is_symlink():
            raise FileMissing(f"image path {shown} is a dangling symlink") from None
        raise FileMissing(f"image file not found: {shown}") from None
    except PermissionError:
        raise BadImage(f"image file {shown} is not readable (permission denied)") from None
    except OSError as problem:
        raise BadImage(f"cannot open image file {shown}: {_os_reason(problem)}") from None

    try:
        if roots and not _opened_inside(descriptor, resolved, roots):
            raise BadImage(f"image path {shown} is outside the allowed image roots")
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise BadImage(f"image path {shown} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImage(f"image path {shown} is not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise BadImage(f"image file {shown} is {describe_size(info.st_size)},"
                           f" over the {describe_size(max_bytes)} limit")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            # Asked for max_bytes + 1, a read allocated it (32 MiB) before it shrank to the file: 0.045 ms of
            # CPU per 50 KB image where asking for its size + 1 costs 0.012. A file that grew after fstat (or
            # reports no size) is read on up to the limit, as before.
            data = handle.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += handle.read(max_bytes + 1 - len(data))
    except OSError as problem:
        raise BadImage(f"cannot read image file {shown}: {_os_reason(problem)}") from None
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:  # the file grew after fstat
        raise BadImage(f"image file {shown} is over the {describe_size(max_bytes)} limit")
    if not data:
        raise BadImage(f"image file {shown} is empty (0 bytes)")
    return data


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _os_reason(problem: BaseException) -> str:
    return getattr(problem, "strerror", None) or str(problem) or type(problem).__name__


# ---------------------------------------------------------------------------------------------
# URLs


def parse_image_url(image_url: str) -> httpx.URL:
    """Parse an image URL and insist on http(s) with a host; the reason names what is wrong."""
    try:
        url = httpx.URL(image_url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as problem:
        raise BadImage(f"invalid image URL: {problem}") from None
    scheme = url.scheme.lower()
    if not scheme:
        raise BadImage("image URL has no scheme (expected http:// or https://)")
    if scheme not in ALLOWED_SCHEMES:
        raise BadImage(f"image URL scheme {scheme!r} is not supported (only http and https)")
    if not url.host:
        raise BadImage("image URL has no host")
    return url


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, as getaddrinfo gives them. A name that does not exist is a `BadImage` and a
    DNS server that does not answer now an `ImageUnavailable`, whether private URLs are allowed or not."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as problem:
        if getattr(problem, "errno", None) == getattr(socket, "EAI_AGAIN", errno.EAGAIN):
            raise ImageUnavailable(f"cannot resolve image URL host {host} now: {_os_reason(problem)}") from None
        raise BadImage(f"cannot resolve image URL host {host}: {_os_reason(problem)}") from None
    return [str(sockaddr[0]) for _family, _type, _proto, _canonical, sockaddr in answers]


# IPv6 prefixes whose addresses carry an IPv4 one in their last 32 bits, which a translator or the host reaches:
# NAT64's well-known and local-use prefixes (RFC 6052, RFC 8215) and the deprecated IPv4-compatible form.
_IPV4_IN_LAST_32_BITS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                         ipaddress.ip_network("::/96"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to, when it embeds one: IPv4-mapped, 6to4 (2002::/16), Teredo's client,
    NAT64 and IPv4-compatible. Such an address is only as public as the IPv4 one: `[64:ff9b::a9fe:a9fe]` is the
    metadata service's 169.254.169.254 through a NAT64 gateway, though Python calls it global."""
    if address.is_loopback or address.is_unspecified:  # ::1 and ::, in ::/96 but no IPv4 address
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def public_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, refusing the lot if any is not public.

    Refused: loopback, private, link-local, carrier-grade NAT, multicast, reserved and
    unspecified addresses, also when embedded in an IPv6 one (embedded_ipv4).
    """
    addresses: list[IPAddress] = []
    for resolved in resolve_host(host, port):
        address = ipaddress.ip_address(resolved.split("%", 1)[0])
        judged: IPAddress = address
        if isinstance(address, ipaddress.IPv6Address) and (embedded := embedded_ipv4(address)) is not None:
            judged = embedded
            if address.ipv4_mapped is not None:  # the IPv4 address itself is connected to
                address = embedded
        if not judged.is_global or judged.is_multicast:
            shown = str(address) if judged == address else f"{address} ({judged})"
            raise BadImage(
                f"image URL host {host} resolves to {shown}, a {_address_kind(judged)} address;"
                " refused (private URLs are not allowed)"
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise BadImage(f"image URL host {host} has no address")
    return addresses


def check_image_url(image_url: str, *, allow_private_urls: bool = False) -> httpx.URL:
    """Parse and (unless private URLs are allowed) address-check a URL another party will fetch."""
    url = parse_image_url(image_url)
    if not allow_private_urls:
        public_addresses(url.host, _port(url))
    return url


def _address_kind(address: IPAddress) -> str:
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    return "non-public"


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme.lower() == "https" else 80)


def _shown(url: httpx.URL) -> str:
    """The URL as error messages show it: no credentials, no query (tokens live there)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}{url.path}"


def download_image(
    image_url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    allow_private_urls: bool = False,
    http_client: httpx.Client | None = None,
) -> bytes:
    """GET an http(s) image URL; `timeout` bounds each network wait and the whole download.

    Without `http_client`, a short-lived client is used. A shared client is fine with
    allow_private_urls; without it, requests go to the checked IP address, and a shared pool may
    reuse one HTTPS connection for two host names served from the same address.
    """
    client = http_client or httpx.Client(trust_env=False, headers={"User-Agent": _USER_AGENT})
    try:
        return _download(
            client,
            parse_image_url(image_url),
            max_bytes=max_bytes,
            timeout=timeout,
            max_redirects=max_redirects,
            allow_private_urls=allow_private_urls,
        )
    finally:
        if http_client is None:
            client.close()


def _download(
    client: httpx.Client,
    url: httpx.URL,
    *,
    max_bytes: int,
    timeout: float,
    max_redirects: int,
    allow_private_urls: bool,
) -> bytes:
    deadline = time.monotonic() + timeout
    watch = ConnectionDeadline(deadline)  # the whole download, head included, within `timeout`
    try:
        return _download_watched(client, url, max_bytes=max_bytes, timeout=timeout, max_redirects=max_redirects,
                                 allow_private_urls=allow_private_urls, watch=watch)
    except (httpx.HTTPError, ImageUnavailable, BadImage):
        if watch.expired:
            raise ImageUnavailable(f"image URL {_shown(url)} did not answer within {timeout:g} s") from None
        raise
    finally:
        watch.cancel()


def _download_watched(client: httpx.Client, url: httpx.URL, *, max_bytes: int, timeout: float, max_redirects: int,
                      allow_private_urls: bool, watch: ConnectionDeadline) -> bytes:
    deadline = watch.deadline
    seen: set[str] = set()
    for _hop in range(max_redirects + 1):
        seen.add(str(url))
        target, headers, extensions = _pinned(url, allow_private_urls)
        try:
            with client.stream(
                "GET",
                target,
                headers={**headers, "Connection": "close"},  # a pooled connection would escape the watch
                extensions={**extensions, "trace": watch.trace},
                follow_redirects=False,
                timeout=httpx.Timeout(timeout),
            ) as response:
                if response.status_code in _REDIRECT_CODES and "location" in response.headers:
                    try:
                        following = url.join(response.headers["location"])
                    except (httpx.InvalidURL, ValueError) as problem:
                        raise BadImage(f"image URL {_shown(url)} redirects to an invalid URL: {problem}") from None
                    if str(following) in seen:
                        raise BadImage(f"image URL {_shown(url)} redirects in a loop")
                    url = parse_image_url(str(following))
                    continue
                if response.status_code != 200:
                    status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
                    passing = response.status_code in _PASSING_CODES or response.status_code >= 500
                    raise (ImageUnavailable if passing else BadImage)(f"image URL {_shown(url)} answered {status}")
                return _read_capped(response, url, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
        except httpx.TimeoutException:
            raise ImageUnavailable(f"image URL {_shown(url)} did not answer within {timeout:g} s") from None
        except httpx.HTTPError as problem:
            failure = ImageUnavailable if isinstance(problem, _PASSING_TRANSPORT_ERRORS) else BadImage
            raise failure(f"cannot download image URL {_shown(url)}: {problem or type(problem).__name__}") from None
    raise BadImage(f"image URL redirected more than {max_redirects} times (last: {_shown(url)})")


def _pinned(url: httpx.URL, allow_private_urls: bool) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The request that connects to the checked address while naming the real host (Host header, TLS SNI)."""
    if allow_private_urls:
        resolve_host(url.host, _port(url))  # httpx resolves again; this only gives the name its verdict
        return url, {}, {}
    address = public_addresses(url.host, _port(url))[0]
    headers = {"Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.host} if url.scheme.lower() == "https" else {}
    return url.copy_with(host=str(address)), headers, extensions


def _read_capped(response: httpx.Response, url: httpx.URL, *, max_bytes: int, deadline: float, timeout: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadImage(f"image URL {_shown(url)} sends {describe_size(int(declared))},"
                       f" over the {describe_size(max_bytes)} limit")
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_bytes():  # decoded bytes: a compressed bomb hits the cap too
        received += len(chunk)
        if received > max_bytes:
            raise BadImage(f"image URL {_shown(url)} sends more than the {describe_size(max_bytes)} limit")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise ImageUnavailable(f"image URL {_shown(url)} took longer than {timeout:g} s to download")
    if not received:
        raise BadImage(f"image URL {_shown(url)} returned an empty body")
    return b"".join(chunks)
