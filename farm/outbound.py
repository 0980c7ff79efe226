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
again before every delivery, so a name that later resolves elsewhere (DNS
rebinding) is refused then; deliveries never follow redirects.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Iterable
from urllib.parse import urlsplit

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


def check_url(url: str, allow: str | None = None,
              resolve=socket.getaddrinfo) -> list[str]:
    """The addresses ``url`` resolves to, when all of them may be reached; else OutboundRefused."""
    parts = urlsplit(url)
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
