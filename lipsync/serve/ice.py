"""Which addresses WebRTC media uses, and no outside servers.

The server gathers ICE candidates on this machine's own interfaces only: no
STUN or TURN server is asked (aiortc would ask a public STUN server by
default), so a session never makes traffic beyond the machine or the LAN it
serves. By default the candidates are every interface aioice finds plus the
loopback (aioice leaves 127.0.0.1 out; a client on the same machine, such as
benchmarks/bench_serve.py, connects there). ``--ice_address`` restricts them
to the given addresses; the browser's own candidates on other addresses and
its mDNS names (*.local) are then dropped from its offer, so the server never
sends a packet anywhere else. Browsers never offer loopback candidates, so a
browser on the same machine reaches the server through a host address.
"""
import ipaddress
from typing import Iterable, Optional, Sequence

import aioice.ice
from aiortc import RTCConfiguration

LOOPBACK = "127.0.0.1"
_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses


def peer_connection_configuration() -> RTCConfiguration:
    """No ICE servers: candidates are this machine's addresses only."""
    return RTCConfiguration(iceServers=[])


def use_addresses(addresses: Optional[Sequence[str]]) -> None:
    """Gather candidates on ``addresses`` only (None: every interface and the loopback), process-wide."""
    if addresses:
        chosen = list(dict.fromkeys(str(address) for address in addresses))

        def host_addresses(use_ipv4: bool, use_ipv6: bool):
            return [address for address in chosen
                    if (ipaddress.ip_address(address).version == 4 and use_ipv4)
                    or (ipaddress.ip_address(address).version == 6 and use_ipv6)]
    else:
        def host_addresses(use_ipv4: bool, use_ipv6: bool):
            found = _AIOICE_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
            return found + [LOOPBACK] if use_ipv4 and LOOPBACK not in found else found
    aioice.ice.get_host_addresses = host_addresses


def keep_candidates(sdp: str, addresses: Optional[Iterable[str]]) -> str:
    """``sdp`` without the candidate lines on other addresses (all kept when ``addresses`` is None)."""
    if not addresses:
        return sdp
    allowed = {str(ipaddress.ip_address(address)) for address in addresses}
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or _address(fields[4]) not in allowed:
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def _address(text: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:                # an mDNS name (xxxx.local) or garbage
        return None
