"""The message codec of the DevicePlugin server and of the Register channel, plugged into
grpclib's public codec hook.

grpclib hands every message it sends or receives to the server's codec
(`grpclib.server.Server(handlers, codec=...)`, `grpclib.client.Channel(codec=...)`, a
`grpclib.encoding.base.CodecBase`), with the message type the handler or stub declares.
This codec writes and reads the hot messages with the hand-written `wire` functions, sends
ListAndWatch lists that were encoded ahead (`EncodedMessage`), and leaves every other
message to betterproto2's own public `bytes(message)` / `Message.parse(data)`. The messages
themselves stay plain generated betterproto2 messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import betterproto2
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from . import wire, wire_read
from .refusal import refusal


@dataclass(frozen=True, slots=True, repr=False)
class EncodedMessage:
    """A message already in wire form, e.g. one device list shared by every ListAndWatch
    stream of a resource (encoded once per list version, off the send path)."""

    message_type: type[betterproto2.Message]
    data: bytes

    def __repr__(self) -> str:
        return f"EncodedMessage({self.message_type.__name__}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class ReceivedBytes:
    """A request taken in as its bytes (a handler's declared request type): the handler
    reads it itself, off the event loop where it is large (`preferred_serving`)."""

    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> ReceivedBytes:  # (what `decode` calls)
        return cls(data)


class DevicePluginCodec(CodecBase):
    """Protobuf (`application/grpc+proto`) with hand-written paths for the hot messages."""

    __content_subtype__ = "proto"

    def __init__(
        self,
        encoders: Mapping[type, Callable[[Any], bytes]] = wire.ENCODERS,
        decoders: Mapping[type, Callable[[bytes], object]] = wire_read.DECODERS,
    ) -> None:
        self._encoders = encoders
        self._decoders = decoders

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, EncodedMessage):
            if message.message_type is not message_type:
                raise TypeError(f"{message!r} sent where {message_type.__name__} is expected")
            return message.data
        if not isinstance(message, message_type):
            raise TypeError(
                f"message must be of type {message_type.__name__}, not {type(message).__name__}"
            )
        encoder = self._encoders.get(message_type)
        if encoder is not None:
            return encoder(message)
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        decoder = self._decoders.get(message_type)
        if decoder is not None:
            try:
                return decoder(data)
            except wire_read.WireError as exc:
                raise unparsable(message_type, exc) from None
        try:
            return message_type.parse(data)
        except Exception as exc:  # betterproto2 raises EOFError, KeyError, ValueError, ...
            raise unparsable(message_type, exc) from None


def unparsable(message_type: type, exc: Exception) -> GRPCError:
    """Bad request bytes: the caller gets INVALID_ARGUMENT and the reason, not an internal error."""
    reason = f"{type(exc).__name__}: {exc}"
    return refusal(Status.INVALID_ARGUMENT, f"cannot parse {message_type.__name__}: {reason}")
