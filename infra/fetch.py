"""Outbound HTTP fetches that cannot be turned against the gateway's own network (SSRF).

Image URLs and webhook URLs come from whoever submits a job. Fetched blindly, one could read a
cloud metadata service (and its credentials), an admin page on loopback or a service on the private
network. Every fetch made through ``open_url``:

- takes ``http://`` and ``https://`` URLs only;
- resolves the host name once and refuses it if any address it resolves to is loopback, private,
  link-local, CGNAT (100.64.0.0/10), multicast, unspecified, reserved or a cloud metadata address
  (``METADATA``), unless the allowlist (``ZAPGATE_FETCH_ALLOW``) names that address's network or the
  URL's host name;
- connects to an address it checked (the next one if that cannot be reached), with the URL's host
  name in the ``Host`` header and the TLS SNI (certificates are still verified against that name),
  so that a second DNS answer (DNS rebinding) cannot send the connection elsewhere;
- follows redirects itself, at most ``MAX_REDIRECTS``, checking each hop again;
- ignores the proxy variables (``HTTP_PROXY``…): a proxy would resolve the name itself.

``ZAPGATE_FETCH_ALLOW`` is a comma-separated list of CIDRs (``10.0.0.0/8``, ``127.0.0.1``) and host
names (``images.internal``, exact match). The callers' timeouts and size caps stay theirs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
MAX_ADDRESSES = 4  # of a name's addresses, the ones tried in turn when one cannot be reached
ALLOW_VARIABLE = "ZAPGATE_FETCH_ALLOW"
REDIRECTS = frozenset({301, 302, 303, 307, 308})

# Cloud metadata and platform services. Most are link-local or CGNAT and refused as such anyway;
# Azure's wire server and Oracle's metadata address are not, so they are named here.
METADATA = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean…
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.169.253",  # AWS DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class FetchRefused(Exception):
    """The URL may not be fetched; the message says why, in words for a job's report."""


@dataclass(frozen=True)
class Allowlist:
    """Networks and host names that may be fetched although they would be refused."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)

    def allows_host(self, host: str) -> bool:
        return _host_key(host) in self.hosts


def parse_allowlist(text: str) -> Allowlist:
    """``"10.0.0.0/8, 127.0.0.1, images.internal"``; raises ValueError naming a bad entry."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = _host_key(entry)
        if "/" in entry or not name or not all(_is_label(label) for label in name.split(".")):
            raise ValueError(f"{entry!r} in {ALLOW_VARIABLE} is neither a CIDR (10.0.0.0/8, 127.0.0.1) nor a host name")
        hosts.add(name)
    return Allowlist(tuple(networks), frozenset(hosts))


def _is_label(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) and label.isascii()


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")


_configured: Allowlist | None = None


def configure(allow: Allowlist | str | None) -> None:
    """Set this process's allowlist (``None``: read ``ZAPGATE_FETCH_ALLOW`` again at the next fetch)."""
    global _configured
    _configured = parse_allowlist(allow) if isinstance(allow, str) else allow


def current_allowlist() -> Allowlist:
    """The allowlist that fetches use unless given one: ``configure``'s, or ``ZAPGATE_FETCH_ALLOW``."""
    global _configured
    if _configured is None:
        _configured = parse_allowlist(os.environ.get(ALLOW_VARIABLE, ""))
    return _configured


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched by default, or None if it is a public address."""
    if (embedded := _embedded_ipv4(address)) is not None:
        return blocked_reason(embedded)
    if address in METADATA:
        return "a cloud metadata address"
    for attribute, words in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
    ):
        if getattr(address, attribute):
            return words
    if address in _CGNAT:
        return "a shared (CGNAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


def check_address(address: IPAddress, allow: Allowlist) -> None:
    if (reason := blocked_reason(address)) is not None and not allow.allows_address(address):
        # The address itself is not said: the reason reaches whoever submitted the job, who should
        # not learn what internal names resolve to.
        raise FetchRefused(f"it leads to {reason} ({ALLOW_VARIABLE} can allow it)")


async def resolve(host: str, port: int, allow: Allowlist) -> list[IPAddress]:
    """The addresses to connect to for ``host``, in the resolver's order: every one must be allowed."""
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await lookup(host, port)
        except (OSError, UnicodeError):
            raise httpx.ConnectError(f"the host name {host!r} cannot be resolved") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(text.split("%", 1)[0]) for text in found))
        if not addresses:
            raise httpx.ConnectError(f"the host name {host!r} has no address")
    named = literal is None and allow.allows_host(host)
    for address in addresses:
        if named and _metadata(address) is None:
            continue  # a name on the allowlist may lead anywhere but to a metadata address
        check_address(address, allow)
    return addresses[:MAX_ADDRESSES]


def _metadata(address: IPAddress) -> IPAddress | None:
    address = _embedded_ipv4(address) or address
    return address if address in METADATA else None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4 or NAT64), which is where it leads."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    embedded = address.ipv4_mapped or address.sixtofour
    if embedded is None and address in _NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded


def _literal_address(host: str) -> IPAddress | None:
    """An address written in the URL: also the old forms ``2130706433``, ``0x7f.1``, ``127.1``."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host[:1].isdigit() and all(c in "0123456789abcdefABCDEFxX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def lookup(host: str, port: int) -> list[str]:
    """The addresses of ``host``, as the system's resolver gives them (the tests put a fake here)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@asynccontextmanager
async def open_url(
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    allow: Allowlist | None = None,
    follow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
) -> AsyncIterator[httpx.Response]:
    """Send the request and yield the final response, streamed (read it within the block).

    Raises FetchRefused for a URL that may not be fetched (a bad scheme, a refused address, too
    many redirects), httpx errors for the rest. A redirect is returned as it is unless
    ``follow_redirects``.
    """
    allow = current_allowlist() if allow is None else allow
    current = _parse(url)
    for hop in range(max_redirects + 1):
        host = current.raw_host.decode("ascii")  # IDNA-encoded, as DNS knows it
        port = current.port or (443 if current.scheme == "https" else 80)
        async with asyncio.timeout(timeout):
            addresses = await resolve(host, port, allow)
        request_headers = {**(headers or {}), "Host": current.netloc.decode("ascii")}
        extensions: dict[str, Any] = {"sni_hostname": host}
        # A new client per hop: a pooled connection made for one name is never reused for another.
        async with httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False) as client:
            for index, address in enumerate(addresses):  # each one checked; the next if one cannot be reached
                request = client.build_request(
                    method, current.copy_with(host=str(address)), headers=request_headers, content=content
                )
                request.extensions.update(extensions)
                try:
                    response = await client.send(request, stream=True)
                    break
                except httpx.ConnectError:
                    if index == len(addresses) - 1:
                        raise
            try:
                location = response.headers.get("location")
                if not (follow_redirects and response.status_code in REDIRECTS and location):
                    yield response
                    return
            finally:
                await response.aclose()
        if hop == max_redirects:
            raise FetchRefused(f"it redirects more than {max_redirects} times")
        current = _parse(str(current.join(location)))
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            method, content = "GET", None
    raise AssertionError("unreachable")  # pragma: no cover


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchRefused(f"it is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchRefused("only http:// and https:// URLs are fetched")
    if not parsed.host:
        raise FetchRefused("it names no host")
    return parsed
