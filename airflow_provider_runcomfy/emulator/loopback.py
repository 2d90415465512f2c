"""What counts as "this machine" for the emulator: ``localhost`` and loopback IP literals.

The client's public rule (``airflow_provider_runcomfy.client.is_loopback_host``), under the
emulator's name: one rule, so that the client's "plain http:// only on loopback" and the
emulator's "listen and take admin calls only on loopback" cannot drift apart. ``*.localhost``
names do not count: the admin API's DNS-rebinding check wants names a foreign page cannot choose.
"""

from __future__ import annotations

from airflow_provider_runcomfy.client import is_loopback_host

#: Whether ``host`` (no port; brackets allowed) is ``localhost`` or an address in 127/8 or ::1.
is_loopback_name = is_loopback_host

__all__ = ["is_loopback_name"]
