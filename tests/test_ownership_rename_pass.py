"""A list that renames devices on their paths (`ownership_renames`): admitted in one pass
when nothing could clash, with what the full admission would have given; the full way
whenever a booking, a swap of IDs or a new rule is involved."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdp_host.config import NeverHanded
from kdp_host.devices import Device
from kdp_host.identity import Identity
from kdp_host.mount_table import MountMap

from .test_ownership import R1, R2, FakeNodes, Host, dev

N = 50


@dataclass(frozen=True)
class CountingRule(NeverHanded):
    """The default rule, counting the paths it is asked about."""

    asked: list[str] = field(default_factory=list, compare=False)

    def problem(
        self,
        real: str,
        key: Identity | None = None,
        mounts: MountMap | None = None,
        *,
        fresh: bool = False,
        writable: bool = True,
    ) -> str | None:
        self.asked.append(real)
        return super().problem(real, key, mounts, fresh=fresh, writable=writable)


def listed(prefix: str, count: int = N) -> list[Device]:
    return [dev(f"{prefix}{i}", f"/dev/n{i}") for i in range(count)]


def host_of(count: int = N) -> Host:
    return Host(FakeNodes({f"/dev/n{i}": ("c", 100 + i) for i in range(count)}))


def owners(host: Host, resource: str, count: int = N) -> list[str]:
    return [host.index._exclusive[("c", 100 + i)].device for i in range(count)]


def test_renaming_every_device_takes_their_claims_without_checking_them_again() -> None:
    """Each renamed device owns its old ID's claims (they were checked against the rule as
    they were claimed, and the rule did not change), as an unchanged list is not checked
    again. Before, the full admission let every claim linger, took it back and asked the rule
    about every path again (a 12,000-device probe renaming every 200 ms: a third of
    kdp-host's CPU)."""
    host = host_of()
    rule = CountingRule()
    host.index.never_handed = rule
    host.publish(R1, *listed("d"))
    host.publish(R1, *listed("e"))  # (the first full admission checks them: rule recorded)
    assert host.ids(R1) == sorted(f"e{i}" for i in range(N))
    asked = len(rule.asked)
    host.publish(R1, *listed("d"))
    assert host.ids(R1) == sorted(f"d{i}" for i in range(N))
    assert owners(host, R1) == [f"d{i}" for i in range(N)]
    assert len(rule.asked) == asked, "no path asked about again"
    assert not host.index._resources[R1].lingering


def test_a_new_rule_is_applied_to_renamed_devices() -> None:
    """A reload that protects the devices' directory: the next rename checks every device
    against the new rule, and holds them."""
    host = host_of()
    host.publish(R1, *listed("d"))
    host.publish(R1, *listed("e"))
    host.index.never_handed = NeverHanded(places=(("a protected directory", "/dev"),))
    host.publish(R1, *listed("d"))
    assert host.ids(R1) == []


async def test_a_booked_device_renamed_keeps_its_booked_id_the_others_take_theirs() -> None:
    host = host_of()
    host.publish(R1, *listed("d"))
    await host.index.quiet()
    host.publish(R1, *listed("e"))
    await host.index.quiet()
    await host.index.book(R1, ["e7"])
    host.publish(R1, *listed("d"))
    await host.index.quiet()
    expected = sorted([f"d{i}" for i in range(N) if i != 7] + ["e7"])
    assert host.ids(R1) == expected
    assert owners(host, R1)[7] == "e7"


def test_ids_swapped_between_devices_follow_the_devices() -> None:
    host = host_of(2)
    host.publish(R1, dev("a", "/dev/n0"), dev("b", "/dev/n1"))
    host.publish(R1, dev("x", "/dev/n0"), dev("y", "/dev/n1"))
    host.publish(R1, dev("y", "/dev/n0"), dev("x", "/dev/n1"))
    assert owners(host, R1, 2) == ["y", "x"]
    [first] = [d for d in host.tables[R1].snapshot.devices if d.id == "y"]
    assert first.nodes[0].host_path == "/dev/n0"


def test_a_renamed_device_whose_node_another_resource_now_lists_keeps_it() -> None:
    """Another resource lists one of the nodes meanwhile (held: the rename's device owns
    it); the rename keeps the node with this resource's device, under its new ID."""
    host = host_of()
    host.publish(R1, *listed("d"))
    host.publish(R2, dev("other", "/dev/n3"))
    assert host.ids(R2) == []
    host.publish(R1, *listed("e"))
    assert owners(host, R1)[3] == "e3"
    assert host.ids(R2) == []
