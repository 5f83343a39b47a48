"""The daemon's side of the control socket: read a request line, answer it (standard library only;
the daemon supplies what the requests act on)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from moat.credentials.rules import Registration
from moat.proxy import protocol

log = logging.getLogger("moat.proxy")


class Controller(Protocol):
    @property
    def stopping(self) -> bool: ...

    def register(self, registration: Registration) -> None:
        """ValueError when the registration is refused."""

    def unregister(self, run_id: str) -> bool: ...

    async def listen(self, host: str) -> int:
        """The port the proxy listens on at ``host``; OSError or ValueError when it cannot."""

    def status(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...

    def touch(self) -> None:
        """A client is here: do not idle out now."""


async def serve(controller: Controller, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one connection until the client closes it."""
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than the stream's limit
                writer.write(protocol.encode(protocol.error("request too long", protocol.CODE_BAD_REQUEST)))
                break
            if not line:
                break
            reply, then_stop = await answer(controller, line)
            writer.write(protocol.encode(reply))
            await writer.drain()
            if then_stop:
                controller.stop()
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def answer(controller: Controller, line: bytes) -> tuple[dict[str, Any], bool]:
    """The reply to one request line, and whether the daemon stops once it is sent."""
    try:
        request = protocol.decode(line)
    except (ValueError, RecursionError):  # RecursionError: a request nested too deep
        return protocol.error("a request is one JSON object per line", protocol.CODE_BAD_REQUEST), False
    op = request.get("op")
    controller.touch()
    if controller.stopping and op != protocol.OP_STATUS:
        return protocol.error("the proxy is stopping", protocol.CODE_STOPPING), False
    try:
        if op == protocol.OP_REGISTER:
            try:
                registration = Registration.from_json(_mapping(request.get("registration")))
            except (AttributeError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
                # Never echoed: a registration holds the run's secrets.
                return protocol.error(f"register: malformed registration ({type(exc).__name__})",
                                      protocol.CODE_BAD_REQUEST), False
            controller.register(registration)
            log.info("registered run %s", registration.run_id)
            return {"ok": True}, False
        if op == protocol.OP_UNREGISTER:
            run_id = str(request.get("run_id") or "")
            removed = controller.unregister(run_id)
            if removed:
                log.info("unregistered run %s", run_id)
            return {"ok": True, "removed": removed}, False
        if op == protocol.OP_LISTEN:
            host = str(request.get("host") or "")
            port = await controller.listen(host)
            return {"ok": True, "port": port}, False
        if op == protocol.OP_STATUS:
            return {"ok": True, **controller.status()}, False
        if op == protocol.OP_STOP:
            return {"ok": True}, True
    except ValueError as exc:  # the daemon's own sentences, which name no secret
        return protocol.error(f"{op}: {exc}", protocol.CODE_BAD_REQUEST), False
    except OSError as exc:
        return protocol.error(f"{op}: {exc.strerror or exc}"), False
    except Exception as exc:  # always an answer (a dropped connection reads as a dead daemon to the client)
        log.exception("control request %r failed", op)
        return protocol.error(f"{op}: failed ({type(exc).__name__})"), False
    return protocol.error(f"unknown request {str(op)[:40]!r}", protocol.CODE_BAD_REQUEST), False


def _mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("registration must be an object")
    return value
