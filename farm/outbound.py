"""Where the farm may send requests of its own (webhooks, and anything later).

Only public addresses, by default: the host is resolved and every address it
resolves to must be global unicast. Loopback, private, link-local (cloud
metadata at 169.254.169.254 included), shared (100.64/10), multicast,
reserved and unspecified addresses are refused, in IPv4 and IPv6, and IPv6
forms of IPv4 addresses (mapped, 6to4, Teredo) are judged by the IPv4 address
inside. Because the check is on resolved addresses, every spelling of a host
(``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``) meets
the same rule. ``FARM_WEBHOOK_ALLOW`` names hosts or networks that are
admitted anyway (an internal receiver). The check runs when a URL is given and
again before every delivery, so a name that later resolves elsewhere is
refused then. :class:`OutboundClient` then connects to exactly an address that
check answered, instead of letting an HTTP client resolve the name a second
time (DNS rebinding between the check and the connect, issue 18): plain http
goes to the address with the URL's ``Host`` header; https goes to the address
with SNI and certificate verification for the URL's host name. Redirects are
never followed and no HTTP(S)_PROXY is used (a proxy would resolve the name
itself).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable
from urllib.parse import SplitResult, urlsplit

import requests.certs
import urllib3
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)

# Names that only ever mean a cloud's metadata service.
METADATA_HOSTS = {"metadata.google.internal", "metadata", "metadata.azure.internal", "instance-data"}


class OutboundRefused(ValueError):
    """The URL may not be reached from the farm; the message says why."""


def parse_allow(value: str | None) -> tuple[set[str], list[ipaddress._BaseNetwork]]:
    """FARM_WEBHOOK_ALLOW: comma-separated host names and networks (CIDR or single addresses)."""
    hosts, networks = set(), []
    for item in (part.strip() for part in (value or "").split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            hosts.add(item.lower().rstrip("."))
    return hosts, networks


def check_url(url: str, allow: str | None = None, resolve=None) -> list[str]:
    """The addresses ``url`` resolves to, when all of them may be reached; else
    OutboundRefused. ``resolve`` stands in for socket.getaddrinfo (looked up at
    the call, so a test can replace it)."""
    resolve = resolve or socket.getaddrinfo
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed "[" (an IPv6 host) and the like: found by the API fuzz test
        raise OutboundRefused("not a URL that can be parsed (check the brackets around an IPv6 host)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundRefused("give an http or https URL with a host")
    if parts.username or parts.password:
        raise OutboundRefused("credentials in the URL are not accepted; put a secret in the webhook instead")
    host = parts.hostname.lower().rstrip(".")
    allowed_hosts, allowed_networks = parse_allow(allow)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused("the URL's port is not a number from 1 to 65535") from None
    if host in METADATA_HOSTS and host not in allowed_hosts:
        raise OutboundRefused(f"{host} is a cloud metadata service")
    try:
        addresses = sorted({info[4][0] for info in resolve(host, port, type=socket.SOCK_STREAM)})
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundRefused(f"{host} does not resolve ({exc})") from None
    if host in allowed_hosts:
        return addresses
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in network for network in allowed_networks):
            continue
        reason = _not_public(ip)
        if reason:
            raise OutboundRefused(f"{host} resolves to {address}, a {reason} address; only public addresses are "
                                  f"reached unless FARM_WEBHOOK_ALLOW names the host or network")
    return addresses


class OutboundClient:
    """Sends requests to the addresses :func:`check_url` approved, never to a
    name resolved again. Connections are kept per (host, address), so a host
    that moves gets a new connection to its new, checked address."""

    MAX_POOLS = 64

    def __init__(self, allow: str | None = None, timeout_s: float = 5.0, resolve=None,
                 ca_certs: str | None = None) -> None:
        self.allow = allow
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self.resolve = resolve
        self.ca_certs = ca_certs or requests.certs.where()  # certifi's bundle, as requests used before
        self._pools: dict[tuple[str, str, str, int], urllib3.HTTPConnectionPool] = {}

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body`` to ``url`` and return the status (a redirect is answered,
        not followed). OutboundRefused when the URL may not be reached; urllib3's
        HTTPError when no checked address could be reached or the exchange failed."""
        addresses = check_url(url, self.allow, self.resolve)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {**headers, "Host": parts.netloc}
        for address in addresses[:-1]:
            try:
                return self._send(parts, address, target, body, headers)
            except NewConnectionError:
                logger.info("outbound: %s at %s does not answer; trying its next checked address", parts.hostname, address)
        return self._send(parts, addresses[-1], target, body, headers)

    def _send(self, parts: SplitResult, address: str, target: str, body: bytes, headers: dict[str, str]) -> int:
        response = self._pool(parts, address).urlopen("POST", target, body=body, headers=headers, redirect=False,
                                                      retries=False, assert_same_host=False)
        return response.status

    def _pool(self, parts: SplitResult, address: str) -> urllib3.HTTPConnectionPool:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, address, port)
        pool = self._pools.get(key)
        if pool is None:
            if len(self._pools) >= self.MAX_POOLS:
                self.close()
            if parts.scheme == "https":
                # Connect to the address; SNI and the certificate's name check use the URL's host.
                pool = urllib3.HTTPSConnectionPool(address, port, timeout=self.timeout, retries=False,
                                                   cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs,
                                                   server_hostname=parts.hostname, assert_hostname=parts.hostname)
            else:
                pool = urllib3.HTTPConnectionPool(address, port, timeout=self.timeout, retries=False)
            self._pools[key] = pool
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _not_public(ip: ipaddress._BaseAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            return _not_public(inner)
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared"
    if not ip.is_global:
        return "non-global"
    return None


def describe(addresses: Iterable[str]) -> str:
    return ", ".join(addresses)
