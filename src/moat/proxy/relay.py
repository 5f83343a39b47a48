"""Byte relays between a TCP port and a Unix socket (standard library only).

The daemon serves its proxy on ``proxy.sock`` through one (mitmproxy listens on TCP only); a run
whose network namespace has nothing but loopback runs the other direction inside it:

    python -m moat.proxy.relay --listen 127.0.0.1:19080 --to MOAT_HOME/proxy/proxy.sock

which prints ``ready`` on stdout once it listens, and relays until it is terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

CHUNK = 256 * 1024
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[], Awaitable[Streams]]


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close passes through: the other side may still answer
    except (ConnectionError, OSError):
        writer.close()


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connect: Connector) -> None:
    """Relay one accepted connection to a new one made by ``connect``, both ways, until both end."""
    try:
        target_reader, target_writer = await connect()
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_copy(reader, target_writer), _copy(target_reader, writer))
    finally:
        for side in (writer, target_writer):
            side.close()
            with contextlib.suppress(ConnectionError, OSError):
                await side.wait_closed()


def to_unix(path: str) -> Connector:
    return lambda: asyncio.open_unix_connection(path, limit=CHUNK)


def to_tcp(host: str, port: int) -> Connector:
    return lambda: asyncio.open_connection(host, port, limit=CHUNK)


async def serve_tcp(host: str, port: int, connect: Connector) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: relay(r, w, connect), host, port, limit=CHUNK)


async def serve_unix(path: str, connect: Connector) -> asyncio.Server:
    return await asyncio.start_unix_server(lambda r, w: relay(r, w, connect), path, limit=CHUNK)


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _main(listen: tuple[str, int], target: str) -> None:
    server = await serve_tcp(*listen, to_unix(target))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moat.proxy.relay",
                                     description="Relay a TCP port to moat's proxy on its Unix socket.")
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--to", required=True, metavar="SOCKET", help="the proxy's Unix socket")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.listen, args.to))
    except OSError as exc:
        print(f"moat relay: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
