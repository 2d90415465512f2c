"""What counts as "this machine" for the emulator: ``localhost`` and loopback IP literals.

The emulator has its own copy of this rule rather than the client's: it
plays the server and must not share the client's mistakes (nor its
private modules). ``*.localhost`` names do not count here: the admin API's
DNS-rebinding check wants names a foreign page cannot choose.
"""

from __future__ import annotations

import ipaddress


def is_loopback_name(host: str | None) -> bool:
    """Whether ``host`` (no port; brackets allowed) is ``localhost`` or an address in 127/8 or ::1."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
