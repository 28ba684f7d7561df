"""A refusal of a kubelet's call: the one way a reason becomes the gRPC status it is sent.

The reason travels as the `grpc-message` trailer, which h2 encodes with HPACK's Huffman
code at a cost quadratic in its length on the event loop (hostile27 F6: an Allocate naming
20,000 unknown IDs held the loop 6 s and the kubelet's connection was lost before its
refusal arrived). Past `rules.STATUS_MESSAGE_LIMIT` characters the message is cut, saying
so; the log line every refusal comes with keeps the whole reason."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..rules import STATUS_MESSAGE_LIMIT

_CUT = " ... ({} more characters in kdp-host's log)"


def refusal(status: Status, reason: str) -> GRPCError:
    """The GRPCError that answers a call with `status` and `reason` (cut to the limit)."""
    if len(reason) > STATUS_MESSAGE_LIMIT:
        kept = STATUS_MESSAGE_LIMIT - len(_CUT.format(len(reason)))
        reason = reason[:kept] + _CUT.format(len(reason) - kept)
    return GRPCError(status, reason)
