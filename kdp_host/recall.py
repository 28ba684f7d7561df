"""What a probe's last output made, for the next one (`command_output`; the shell driver
keeps one per resource)."""

from __future__ import annotations

from .devices import Device, DeviceNode


class Recall:
    """What a probe's last output made (the shell driver keeps one): each entry (a line, a
    JSON list entry) by its text, each JSON `paths` list of strings by its strings. An entry
    printed again is the same Device object (what compares lists downstream sees it unchanged
    by identity, and nothing is made or kept twice); a device renamed on the same paths gets
    the same nodes. It holds what the last output that parsed made, nothing older."""

    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}
        self._nodes: dict[tuple[str, ...], tuple[DeviceNode, ...]] = {}
        self._new_devices: dict[str, Device] = {}
        self._new_nodes: dict[tuple[str, ...], tuple[DeviceNode, ...]] = {}

    def start(self) -> None:
        self._new_devices, self._new_nodes = {}, {}

    def device(self, text: str) -> Device | None:
        """The device the last output made of the entry `text`."""
        return self._devices.get(text)

    def nodes(self, paths: tuple[str, ...]) -> tuple[DeviceNode, ...] | None:
        """The nodes the last output made of `paths`."""
        return self._nodes.get(paths)

    def keep(self, text: str, device: Device) -> Device:
        """`device` is what this output made of `text`; returns it."""
        self._new_devices[text] = device
        return device

    def keep_nodes(
        self, paths: tuple[str, ...], nodes: tuple[DeviceNode, ...]
    ) -> tuple[DeviceNode, ...]:
        self._new_nodes[paths] = nodes
        return nodes

    def parsed(self) -> None:
        """The output parsed: what it made is what the next one recalls."""
        self._devices, self._nodes = self._new_devices, self._new_nodes
        self.start()
