"""The shell driver's output formats: `lines` and `json`, valid input and every error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdp_host.command_output import ProbeOutputError, parse_json, parse_lines, parse_output
from kdp_host.devices import Device, DeviceMount, DeviceNode

# --- lines ---------------------------------------------------------------------------------


def test_lines_full_example() -> None:
    out = b"""# vendor dongles
dongle-a Healthy path=/dev/bus/usb/001/004 numa=0

  dongle-b unhealthy path=/dev/ttyUSB0:/dev/dongle path=/dev/ttyUSB1
dongle-c
"""
    assert parse_lines(out) == [
        Device(id="dongle-a", nodes=(DeviceNode("/dev/bus/usb/001/004", "/dev/bus/usb/001/004"),),
               numa=0),
        Device(
            id="dongle-b",
            healthy=False,
            nodes=(
                DeviceNode("/dev/ttyUSB0", "/dev/dongle"),
                DeviceNode("/dev/ttyUSB1", "/dev/ttyUSB1"),
            ),
        ),
        Device(id="dongle-c"),
    ]  # fmt: skip


def test_lines_health_words_are_case_insensitive() -> None:
    devices = parse_lines("a HEALTHY\nb unHealthy\nc healthy numa=3")
    assert [(d.id, d.healthy, d.numa) for d in devices] == [
        ("a", True, None),
        ("b", False, None),
        ("c", True, 3),
    ]


def test_lines_path_keeps_colons_of_by_path_names() -> None:
    host = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0"
    (device,) = parse_lines(f"d0 path={host}\n")
    assert device.nodes == (DeviceNode(host, host),)
    (device,) = parse_lines(f"d0 path={host}:/dev/ttyX\n")
    assert device.nodes == (DeviceNode(host, "/dev/ttyX"),)


def test_lines_empty_output_and_comments_mean_no_devices() -> None:
    assert parse_lines(b"") == []
    assert parse_lines(b"\n  \n# nothing here\n\r\n") == []


def test_lines_crlf_line_endings() -> None:
    assert [d.id for d in parse_lines(b"a Healthy\r\nb\r\n")] == ["a", "b"]


def test_lines_str_and_bytes_agree() -> None:
    text = "a Unhealthy numa=1\nb path=/dev/b\n"
    assert parse_lines(text) == parse_lines(text.encode())


def test_lines_id_at_length_limit_is_accepted() -> None:
    assert parse_lines("x" * 128)[0].id == "x" * 128


@pytest.mark.parametrize(
    ("output", "line", "fragment"),
    [
        (b"a\nb Sick\n", 2, "health must be Healthy or Unhealthy"),
        (b"a Healthy Healthy\n", 1, "expected key=value"),
        (b"a foo=1\n", 1, "unknown key 'foo'"),
        (b"a path=dev/x\n", 1, "host path must be an absolute path"),
        (b"a path=\n", 1, "host path must be an absolute path"),
        (b"a numa=-1\n", 1, "numa must be a node number"),
        (b"a numa=x\n", 1, "numa must be a node number"),
        (b"a numa=1_0\n", 1, "numa must be a node number"),
        (b"a numa=\xd9\xa3\n", 1, "numa must be a node number"),
        (b"a numa=99999999999999999999999\n", 1, "numa must be a node number"),
        (b"a numa=1024\n", 1, "numa must be a node number"),
        (b"a numa=1 numa=2\n", 1, "numa given twice"),
        (b"a path=/dev/x path=/dev/x\n", 1, "given twice"),
        (b"a\n# c\nb\na\n", 4, "already given on line 1"),
        (b"a\x1bb\n", 1, "whitespace or control characters"),
        (b"x" * 129 + b"\n", 1, "longer than 128"),
        (b"a\x01b Healthy\n", 1, "whitespace or control characters"),
        (b"a\xe2\x80\x8bb\n", 1, "whitespace or control characters"),
        (b"ok\n\xff\xfe bad\n", 2, "not valid UTF-8"),
        (b"a path=/dev/\x00x\n", 1, "NUL"),
        # `{ids}` and `{paths}` list with `,`: an ID or a node path holding one would name
        # another device in a hook's argv (issue 17 item 7)
        (b"fpga0,fpga1 Healthy\n", 1, "device ID must not contain ','"),
        (b"a path=/dev/a,/dev/b\n", 1, "host path must not contain ','"),
        (b"a path=/dev/a:/dev/b,c\n", 1, "container path must not contain ','"),
        # the runtime resolves `..`: both nodes would land on /dev/fpga
        (b"a path=/dev/a:/dev/x/../fpga\n", 1, "container path must be in normal form"),
        (b"a path=/dev//a\n", 1, "container path must be in normal form"),
    ],
)
def test_lines_errors_name_the_line(output: bytes, line: int, fragment: str | None) -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_lines(output)
    error = caught.value
    assert error.line == line
    assert error.text is not None
    assert str(error).startswith(f"line {line}: ")
    if fragment is not None:
        assert fragment in str(error)


def test_lines_error_quotes_the_offending_line() -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_lines("good\nbad-device numa=many\n")
    assert caught.value.text == "bad-device numa=many"
    assert "'bad-device numa=many'" in str(caught.value)


def test_lines_error_quote_is_truncated() -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_lines("a " + "z" * 5000)
    assert len(str(caught.value)) < 600


# --- json ----------------------------------------------------------------------------------

FULL_JSON: list[dict[str, Any]] = [
    {
        "id": "card0",
        "health": "unhealthy",
        "paths": [
            "/dev/card0",
            "/dev/card0-ctl:/dev/ctl",
            {"hostPath": "/dev/x", "containerPath": "/y"},
        ],
        "numa": 1,
        "env": {"CARD_SERIAL": "A1"},
        "mounts": [
            {"hostPath": "/opt/fw", "containerPath": "/fw"},
            {"hostPath": "/var/card", "containerPath": "/card", "readOnly": False},
        ],
        "annotations": {"vendor.example/serial": "A1"},
    },
    {"id": "card1", "paths": [{"hostPath": "/dev/card1"}], "numa": None, "health": None},
]  # fmt: skip

FULL_DEVICES = [
    Device(
        id="card0",
        healthy=False,
        nodes=(
            DeviceNode("/dev/card0", "/dev/card0"),
            DeviceNode("/dev/card0-ctl", "/dev/ctl"),
            DeviceNode("/dev/x", "/y"),
        ),
        numa=1,
        env={"CARD_SERIAL": "A1"},
        mounts=(DeviceMount("/opt/fw", "/fw", True), DeviceMount("/var/card", "/card", False)),
        annotations={"vendor.example/serial": "A1"},
    ),
    Device(id="card1", nodes=(DeviceNode("/dev/card1", "/dev/card1"),)),
]


def test_json_list_and_devices_object_forms() -> None:
    assert parse_json(json.dumps(FULL_JSON).encode()) == FULL_DEVICES
    assert parse_json(json.dumps({"devices": FULL_JSON}, indent=2)) == FULL_DEVICES
    assert parse_json(b"[]") == []
    assert parse_json(b'{"devices": []}\n') == []


def test_parse_output_dispatches_on_format() -> None:
    assert parse_output(b'[{"id": "a"}]', "json") == [Device(id="a")]
    assert parse_output(b"a\n", "lines") == [Device(id="a")]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("", "invalid JSON"),
        ("[", "invalid JSON"),
        ("{}", "expected a list of devices"),
        ('{"devices": [], "extra": 1}', "expected a list of devices"),
        ('{"devices": {}}', "devices: expected a list of devices, got an object"),
        ('"a"', "expected a list of devices, got a string"),
        ("[1]", "[0]: device must be an object, got a number"),
        ("[{}]", "[0]: missing required key 'id'"),
        ('[{"id": 1}]', "id must be a string"),
        ('[{"id": ""}]', "must not be empty"),
        ('[{"id": "a b"}]', "whitespace or control"),
        ('[{"id": "a\\u0000"}]', "id must not contain NUL"),
        ('[{"id": "a\\ud800"}]', "id must not contain control character"),
        ('[{"id": "a\\u0007"}]', "control character"),
        ('[{"id": "a", "colour": "red"}]', "unknown key 'colour'"),
        ('[{"id": "a"}, {"id": "a"}]', "[1]: device ID 'a' already given at [0]"),
        ('[{"id": "a", "health": "ok"}]', "health must be Healthy or Unhealthy"),
        ('[{"id": "a", "health": true}]', "health must be a string"),
        ('[{"id": "a", "paths": "/dev/a"}]', "paths must be a list"),
        ('[{"id": "a", "paths": ["dev/a"]}]', "must be an absolute path"),
        ('[{"id": "a", "paths": [{"containerPath": "/x"}]}]', "missing required key 'hostPath'"),
        ('[{"id": "a", "paths": [{"hostPath": "/x", "mode": "rw"}]}]', "unknown key 'mode'"),
        ('[{"id": "a", "paths": [{"hostPath": "/x", "containerPath": "y"}]}]', "absolute"),
        ('[{"id": "a", "paths": [3]}]', "paths[0] must be an object"),
        ('[{"id": "a", "paths": ["/a", "/b:/a"]}]', "container path '/a' given twice"),
        ('[{"id": "a,b"}]', "device ID must not contain ','"),
        ('[{"id": "a", "paths": [{"hostPath": "/x,/y"}]}]', "host path must not contain ','"),
        ('[{"id": "a", "paths": [{"hostPath": "/x", "containerPath": "/y,z"}]}]',
         "container path must not contain ','"),
        ('[{"id": "a", "paths": [{"hostPath": "/x", "containerPath": "/d/./x"}]}]',
         "container path must be in normal form"),
        ('[{"id": "a", "mounts": [{"hostPath": "/a", "containerPath": "/dev/fpga/."}]}]',
         "container path must be in normal form"),
        ('[{"id": "a", "numa": "1"}]', "numa must be an integer"),
        ('[{"id": "a", "numa": true}]', "numa must be an integer"),
        ('[{"id": "a", "numa": 1.5}]', "numa must be an integer"),
        ('[{"id": "a", "numa": -1}]', "numa must be a node number"),
        ('[{"id": "a", "env": ["X=1"]}]', "env must be an object of strings"),
        ('[{"id": "a", "env": {"1X": "v"}}]', "must be letters, digits"),
        ('[{"id": "a", "env": {"X": 1}}]', "env.X must be a string"),
        ('[{"id": "a", "env": {"X": "a\\u0000b"}}]', "NUL"),
        ('[{"id": "a", "mounts": [{"hostPath": "/a"}]}]', "missing required key 'containerPath'"),
        ('[{"id": "a", "mounts": [{"hostPath": "/a", "containerPath": "/b", "readOnly": "no"}]}]',
         "readOnly must be true or false"),
        ('[{"id": "a", "mounts": [{"hostPath": "/a", "containerPath": "/b", "rw": 1}]}]',
         "unknown key 'rw'"),
        ('[{"id": "a", "annotations": {"k": 1}}]', "annotations.k must be a string"),
        ('[{"id": "a", "annotations": {"a key": "v"}}]', "name must be [A-Za-z0-9-_.]"),
        ('[{"id": "a", "id": "b"}]', "key 'id' given twice"),
        ("[" * 100000, "invalid JSON"),
        ("[1" + "0" * 5000 + "]", "invalid JSON"),
    ],
)  # fmt: skip
def test_json_errors(document: str, fragment: str) -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_json(document.encode())
    assert fragment in str(caught.value)


def test_json_syntax_error_names_line_and_quotes_it() -> None:
    document = b'[\n  {"id": "a"},\n  {"id": "b",}\n]'
    with pytest.raises(ProbeOutputError) as caught:
        parse_json(document)
    assert caught.value.line == 3
    assert caught.value.text == '{"id": "b",}'


def test_json_invalid_utf8_names_line() -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_json(b'[\n{"id": "a"},\n{"id": "\xff"}]')
    assert caught.value.line == 3
    assert "not valid UTF-8" in str(caught.value)


def test_json_entry_error_quotes_the_entry() -> None:
    with pytest.raises(ProbeOutputError) as caught:
        parse_json(b'{"devices": [{"id": "ok"}, {"id": "bad", "numa": "x"}]}')
    assert str(caught.value).startswith("devices[1]: numa must be an integer")
    assert caught.value.text == '{"id": "bad", "numa": "x"}'


# --- fuzzing: nothing but ProbeOutputError ever escapes ------------------------------------

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_probe_errors(parse: Any, data: Any) -> None:
    try:
        devices = parse(data)
    except ProbeOutputError:
        return
    assert all(isinstance(d, Device) for d in devices)
    assert len({d.id for d in devices}) == len(devices)


@_FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_bytes(data: bytes) -> None:
    _only_probe_errors(parse_lines, data)
    _only_probe_errors(parse_json, data)


@_FUZZ
@given(st.text(max_size=500))
def test_fuzz_text(text: str) -> None:
    _only_probe_errors(parse_lines, text)
    _only_probe_errors(parse_json, text)
    _only_probe_errors(parse_lines, text.encode("utf-8", "surrogatepass"))
    _only_probe_errors(parse_json, text.encode("utf-8", "surrogatepass"))


_TOKEN = st.one_of(
    st.sampled_from(["Healthy", "unhealthy", "HEALTHY", "sick", "#", "=", "path=", "numa="]),
    st.builds(lambda v: f"path={v}", st.text(max_size=20)),
    st.builds(lambda v: f"numa={v}", st.text(max_size=6)),
    st.text(max_size=12),
)


@_FUZZ
@given(st.lists(st.lists(_TOKEN, max_size=5), max_size=8))
def test_fuzz_lines_structured(rows: list[list[str]]) -> None:
    text = "\n".join(" ".join(row) for row in rows)
    _only_probe_errors(parse_lines, text)
    _only_probe_errors(parse_lines, text.encode("utf-8", "surrogatepass"))


_KEYS = st.sampled_from(
    ["id", "health", "paths", "numa", "env", "mounts", "annotations", "hostPath",
     "containerPath", "readOnly", "devices", "x"]
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


@_FUZZ
@given(_JSON)
def test_fuzz_json_structured(document: Any) -> None:
    _only_probe_errors(parse_json, json.dumps(document))
    _only_probe_errors(parse_json, json.dumps({"devices": document}))
    _only_probe_errors(parse_json, json.dumps([document]))


def test_json_marks_paths_and_mounts_every_device_shares() -> None:
    """`/dev/vfio/vfio` goes with every vfio device: `shared: true` claims it shared in the
    host's ownership index instead of letting only one device have it."""
    [first, second] = parse_json(
        json.dumps(
            [
                {
                    "id": f"g{n}",
                    "paths": [
                        f"/dev/vfio/{n}",
                        {"hostPath": "/dev/vfio/vfio", "shared": True},
                    ],
                    "mounts": [{"hostPath": "/opt/fw", "containerPath": "/fw", "shared": True}],
                }
                for n in (1, 2)
            ]
        )
    )
    assert [n.shared for n in first.nodes] == [False, True]
    assert second.mounts == (DeviceMount("/opt/fw", "/fw", True, shared=True),)
    with pytest.raises(ProbeOutputError, match=r"shared must be true or false"):
        parse_json('[{"id": "a", "paths": [{"hostPath": "/dev/a", "shared": "yes"}]}]')
