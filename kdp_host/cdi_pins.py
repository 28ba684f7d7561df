"""The held entries of a resource's CDI spec file (`cdi.CdiSpecWriter`): what each booked ID
keeps, taken from the record of what its Allocate handed out (`handed_out`) and the bookings.

A container that restarts resolves its CDI names again without a new Allocate, so a booked
ID's entry keeps the device as its Allocate handed it out (`cdi_spec.Held`, rendered by
`cdi_spec.render_held`), whether the resource still lists it (`cdi`) or a reload removed the
resource or its `allocate.cdi` (`cdi_keeper`).
"""

from __future__ import annotations

from collections.abc import Callable

from .cdi_spec import Held
from .devices import physical_id
from .handed_entries import cdi_held
from .handed_out import HandedOut


def held_entries(pinned: HandedOut, booked: Callable[[str], bool]) -> Held:
    """Each booked ID's use as its Allocate handed it out (entries none of whose IDs is still
    booked are let go first), an older version's device-named uses, and the IDs withheld
    (booked, not known as handed out: left out, with the device's own name, which an older
    version may have answered)."""
    pinned.let_go(booked)
    entries = {d: h for d in pinned.devices if (h := pinned.entry(d)) is not None}
    by_id, legacy = cdi_held(entries, booked)
    withheld = pinned.withheld
    return Held(
        {i: use.device for i, use in by_id.items()},
        {i: use.reached for i, use in by_id.items()},
        frozenset({*withheld, *(physical_id(i) for i in withheld)}),
        {d: use.device for d, use in legacy.items()},
        {d: use.reached for d, use in legacy.items()},
    )
