"""Registration through the kubelet's plugins_registry directory (its plugin manager).

Instead of calling Register on kubelet.sock, the resource serves the kubelet's
`pluginregistration.Registration` service beside its DevicePlugin service, on one socket in
the plugins_registry directory. The kubelet's plugin watcher finds the socket, asks GetInfo,
dials the endpoint it names (the same socket, by absolute path), and reports the outcome with
NotifyRegistrationStatus (docs/kubelet-contract.md §14). After a kubelet restart the new
plugin manager finds the socket again: kdp-host has nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..api.pluginregistration import (
    InfoRequest,
    PluginInfo,
    RegistrationBase,
    RegistrationStatus,
    RegistrationStatusResponse,
)
from .registration import API_VERSION

PLUGIN_TYPE = "DevicePlugin"
"""GetInfo's `type` of a device plugin (the kubelet's `DevicePlugin` handler)."""
MAX_ERROR_TEXT = 1000
"""Characters of the kubelet's error text kept (it is logged; the kubelet's own are short)."""


@dataclass(frozen=True)
class KubeletVerdict:
    """One NotifyRegistrationStatus: registered, or the kubelet's error text."""

    registered: bool
    error: str


class PluginRegistrationService(RegistrationBase):
    """`pluginregistration.Registration` of one resource: GetInfo names the resource and its
    endpoint; each call is reported to the resource (`on_info`, `on_verdict`)."""

    def __init__(
        self,
        resource: str,
        endpoint: str,
        *,
        on_info: Callable[[], None],
        on_verdict: Callable[[KubeletVerdict], None],
    ) -> None:
        self.info = PluginInfo(
            type=PLUGIN_TYPE, name=resource, endpoint=endpoint, supported_versions=[API_VERSION]
        )
        self._on_info = on_info
        self._on_verdict = on_verdict

    async def get_info(self, message: InfoRequest) -> PluginInfo:
        self._on_info()
        return self.info

    async def notify_registration_status(
        self, message: RegistrationStatus
    ) -> RegistrationStatusResponse:
        error = str(message.error)[:MAX_ERROR_TEXT]
        self._on_verdict(KubeletVerdict(bool(message.plugin_registered), error))
        return RegistrationStatusResponse()
