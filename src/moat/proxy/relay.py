"""Byte relays between a TCP port and a Unix socket (standard library only).

The daemon serves its proxy on ``proxy.sock`` through one (mitmproxy listens on TCP only); a run
whose network namespace has nothing but loopback runs the other direction inside it:

    python -m moat.proxy.relay --listen 127.0.0.1:19080 --to MOAT_HOME/proxy/proxy.sock

which prints ``ready`` on stdout once it listens, and relays until it is terminated. The sandbox's
published ports go the other way, ``--forward SOCKET=127.0.0.1:PORT``: a Unix socket the routing
proxy reaches from outside, to a port inside the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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


def _forward(text: str) -> tuple[str, tuple[str, int]]:
    path, equals, address = text.partition("=")
    if not equals or not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"'{text}' is not SOCKET=HOST:PORT")
    return path, _address(address)


async def _main(listen: tuple[str, int] | None, target: str | None,
                forwards: list[tuple[str, tuple[str, int]]]) -> None:
    servers = [await serve_tcp(*listen, to_unix(target))] if listen is not None and target is not None else []
    for path, (host, port) in forwards:  # inward: a Unix socket outside the namespace to a port inside
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        servers.append(await serve_unix(path, to_tcp(host, port)))
        os.chmod(path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        for server in servers:
            await stack.enter_async_context(server)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moat.proxy.relay",
                                     description="Relay a TCP port to moat's proxy on its Unix socket.")
    parser.add_argument("--listen", type=_address, metavar="HOST:PORT")
    parser.add_argument("--to", metavar="SOCKET", help="the proxy's Unix socket")
    parser.add_argument("--forward", type=_forward, action="append", default=[], metavar="SOCKET=HOST:PORT",
                        help="listen on SOCKET and relay to HOST:PORT (a run's published port; repeatable)")
    args = parser.parse_args(argv)
    if (args.listen is None) != (args.to is None) or (args.listen is None and not args.forward):
        parser.error("give --listen and --to, or --forward")
    try:
        asyncio.run(_main(args.listen, args.to, args.forward))
    except OSError as exc:
        print(f"moat relay: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
