"""What a CDI spec file must be, for every test that looks at one the host wrote.

Two checks, one entry point (`validate_cdi_spec`, or `read_spec_file` for a file on disk):

- the official CDI JSON schema, `schema.json` + `defs.json` from the `schema/` directory of
  the CDI repository (cncf-tags/container-device-interface). No PyPI or npm package ships it
  and the project does not copy it: `make test` fetches the one of CDI v0.5.2 from Debian's
  package of CDI's Go module into `.tools/cdi-schema/` (`make cdi-schema`, pinned by sha256).
  A newer release's schema (`CDI_SCHEMA_TAG` or later) is taken first, from the directory
  named by `KDP_CDI_SCHEMA_DIR` or from `../shared/cdi-schema/`. v0.5.2's schema knows the
  fields of CDI 0.5 and lets later ones (annotations, `additionalGids`) through unchecked:
  the Go rules below check those. Where no schema is found, `test_specs_validate_against_
  the_official_cdi_schema` skips and says how to provide it (`missing_schema_reason`);
- what CDI's Go code enforces beyond the schema (the schema requires fields; names, versions
  and empty edits are refused by pkg/parser/parser.go, specs-go/version.go and
  pkg/cdi/spec.go + container-edits.go), for the fields kdp-host writes.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from referencing.jsonschema import DRAFT7

from kdp_host.cdi_acceptance import judge

from .kubelet_harness import REPO

KNOWN_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]*")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?")

CDI_SCHEMA_ENV = "KDP_CDI_SCHEMA_DIR"
CDI_SCHEMA_TAG = "v1.1.0"
"""The CDI release whose schema the tests were written against (any later one will do)."""


FETCHED_SCHEMA = REPO / ".tools" / "cdi-schema"
"""Where `make cdi-schema` puts the schema of Debian's CDI package (v0.5.2)."""


def cdi_schema_dir() -> Path:
    """`KDP_CDI_SCHEMA_DIR` when set, else the first of ../shared/cdi-schema and
    .tools/cdi-schema that holds the schema (the first when neither does)."""
    configured = os.environ.get(CDI_SCHEMA_ENV)
    if configured:
        return Path(configured)
    places = [REPO.parent / "shared" / "cdi-schema", FETCHED_SCHEMA]
    return next((p for p in places if (p / "schema.json").is_file()), places[0])


def missing_schema_reason() -> str:
    return (
        f"the official CDI JSON schema is not at {cdi_schema_dir()} nor in {FETCHED_SCHEMA} "
        "(`make cdi-schema`: Debian's CDI package): copy schema/schema.json and "
        "schema/defs.json of github.com/cncf-tags/container-device-interface (tag "
        f"{CDI_SCHEMA_TAG} or later) into the first, or set {CDI_SCHEMA_ENV} to a "
        "directory holding them"
    )


@functools.cache
def official_cdi_validator() -> jsonschema.Draft7Validator | None:
    """A validator of the official schema (its `defs.json` references resolved), or None
    where the schema is not present."""
    directory = cdi_schema_dir()
    if not ((directory / "schema.json").is_file() and (directory / "defs.json").is_file()):
        return None
    schema = json.loads((directory / "schema.json").read_text())
    defs = json.loads((directory / "defs.json").read_text())
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        "defs.json", referencing.Resource.from_contents(defs, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def _vendor_or_class_ok(name: str) -> bool:
    return (
        len(name) >= 2
        and name[0].isascii()
        and name[0].isalpha()
        and name[-1].isascii()
        and name[-1].isalnum()
        and _NAME_CHARS.fullmatch(name) is not None
    )


def _required_version(spec: dict[str, Any]) -> tuple[int, ...]:
    required = (0, 3, 0)
    _, _, klass = spec["kind"].partition("/")
    edits = [d["containerEdits"] for d in spec["devices"]] + [spec.get("containerEdits", {})]
    if any(m.get("type") for e in edits for m in e.get("mounts", [])):
        required = max(required, (0, 4, 0))
    if any(not d["name"][0].isalpha() for d in spec["devices"]) or any(
        n.get("hostPath") for e in edits for n in e.get("deviceNodes", [])
    ):
        required = max(required, (0, 5, 0))
    if (
        "." in klass
        or spec.get("annotations")
        or any(d.get("annotations") for d in spec["devices"])
    ):
        required = max(required, (0, 6, 0))
    if any(e.get("additionalGids") or e.get("intelRdt") for e in edits):
        required = max(required, (0, 7, 0))
    return required


def _check_edits(edits: dict[str, Any], *, device: bool) -> None:
    allowed = {"env", "deviceNodes", "mounts", "hooks", "netDevices", "intelRdt", "additionalGids"}
    assert set(edits) <= allowed, edits
    if device:
        assert any(edits.get(key) for key in allowed), "CDI: invalid device, empty device edits"
    for entry in edits.get("env", []):
        assert entry.find("=") > 0, f"CDI: invalid environment variable {entry!r}"
    for node in edits.get("deviceNodes", []):
        assert node["path"], "CDI: invalid (empty) device path"
        assert node["path"].startswith("/") and node.get("hostPath", "/").startswith("/")
        permissions = node.get("permissions", "")
        assert permissions == "none" or not permissions.strip("rwm"), permissions
    for mount in edits.get("mounts", []):
        assert mount["hostPath"] and mount["containerPath"]
        assert set(mount.get("options", [])) <= {"ro", "rw", "bind", "rbind"}


def validate_cdi_spec(spec: dict[str, Any]) -> None:
    """The official CDI JSON schema where present (`cdi_schema_dir`), and what CDI's Go code
    enforces beyond the schema (names, versions, edits), for the fields kdp-host writes."""
    validator = official_cdi_validator()
    if validator is not None:
        validator.validate(spec)
    assert spec["cdiVersion"] in KNOWN_VERSIONS
    declared = tuple(int(p) for p in spec["cdiVersion"].split("."))
    assert declared >= _required_version(spec), "CDI: the spec version must be at least ..."
    vendor, sep, klass = spec["kind"].partition("/")
    assert sep and _vendor_or_class_ok(vendor) and _vendor_or_class_ok(klass), spec["kind"]
    assert spec["devices"], "CDI: invalid spec, no devices"
    names = [d["name"] for d in spec["devices"]]
    assert len(names) == len(set(names)), "CDI: invalid spec, multiple device"
    for device in spec["devices"]:
        assert _DEVICE_NAME.fullmatch(device["name"]), device["name"]
        _check_edits(device["containerEdits"], device=True)
    _check_edits(spec.get("containerEdits", {}), device=False)
    verdict = judge(spec)  # (kdp-host's own reader takes what it writes: one rule)
    assert not verdict.refused and not verdict.unsure, verdict


def read_spec_file(path: Path | str) -> dict[str, Any]:
    """A spec file the host wrote, parsed and checked (`validate_cdi_spec`)."""
    spec: dict[str, Any] = json.loads(Path(path).read_text())
    validate_cdi_spec(spec)
    return spec
