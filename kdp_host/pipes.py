"""The read end of a command's pipe, connected to the event loop (both loops: asyncio's and
uvloop), closed once by whoever owns it."""

from __future__ import annotations

import asyncio
import os


class PipeEnd:
    """One end of a pipe, closed at most once and only while it is still that pipe.

    Handed to the loop's `connect_read_pipe`, which owns it from then on, on both loops and
    whatever happens: the standard loop's transport calls `close()` (a turn later when the
    connection is cancelled), but uvloop's handle closes the descriptor itself (libuv) when
    the connection is cancelled, before the file object is attached. A file object closed
    then raised EBADF or, were the number reused meanwhile (another thread), closed someone
    else's descriptor; this one checks that the number is still this pipe (its inode).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        stat = os.fstat(fd)
        self._identity = (stat.st_dev, stat.st_ino)
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            stat = os.fstat(self._fd)
        except OSError:
            return  # closed by the loop already
        if (stat.st_dev, stat.st_ino) == self._identity:
            os.close(self._fd)


class Pipe:
    """The read end of a pipe, connected to the event loop; closing it is ours to do."""

    def __init__(self, transport: asyncio.ReadTransport, reader: asyncio.StreamReader) -> None:
        self.transport = transport
        self.reader = reader

    @classmethod
    async def connect(cls, fd: int, limit: int) -> Pipe:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        pipe = PipeEnd(fd)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
        except BaseException:
            pipe.close()
            raise
        return cls(transport, reader)

    def close(self) -> None:
        self.transport.close()
