"""A virtual receipt printer: a raw TCP (port 9100) listener that decodes what it receives.

It answers the way an Epson TM printer does: real-time status (``DLE EOT 1/2/4``), the
in-order paper status ``GS r 1`` (only after everything before it was "printed"), and
``GS ( H`` process-id requests. It keeps every received job as a decoded
:class:`~tillpoint.printer.decode.Document` and can misbehave on purpose for fault tests:

- :meth:`VirtualPrinter.stop` closes the listener and every open connection (then
  connections are refused until :meth:`VirtualPrinter.start` on the same port);
- ``close_after_bytes``: drop each connection after that many bytes (a printer that resets
  mid-job);
- ``stop_after_bytes``: after that many bytes on one connection, stop altogether (switched
  off mid-job: the connection drops and new ones are refused until ``start()``);
- ``confirm_delay_s``: answer ``GS r`` only after this delay (a slow printer);
- ``answer_status = False``: never answer status requests (a printer that does not support
  them, or a print server that swallows them);
- ``answer_gs_r = False``: answer ``DLE EOT`` but never ``GS r`` (a printer without it);
- ``paper = "out"`` / ``cover_open = True``: report it in the status replies and hold the data
  (print nothing, answer no ``GS r``) until the fault is cleared, as a real printer does.

Run it for a demo or a manual test::

    python -m tillpoint.printer.virtual --port 9100 --png-dir /tmp/coupons

and point a till's ``[printer]`` at ``kind = "network"``, ``host = "127.0.0.1"``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from tillpoint.printer.decode import Decoder, Document, StatusRequest
from tillpoint.printer.render import render_png, render_text

__all__ = ["VirtualPrinter", "main"]


class VirtualPrinter:
    """A loopback ESC/POS printer for tests and the demo. Thread-safe; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        columns: int = 48,
        codepages: Mapping[int, str] | None = None,
        on_document: Callable[[Document], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.columns = columns
        self.codepages = dict(codepages or {})
        self.on_document = on_document
        self.paper: Literal["ok", "low", "out"] = "ok"
        self.cover_open = False
        self.answer_status = True
        self.answer_gs_r = True  # False: a printer without GS r that still answers DLE EOT
        self.close_after_bytes: int | None = None
        self.stop_after_bytes: int | None = None
        self.confirm_delay_s = 0.0  # a slow printer: GS r is answered this much later
        # bytes sent as a GS r arrives, before its answer: a status the printer sends by
        # itself (automatic status back) or a late answer to an earlier question
        self.unsolicited = b""
        self.documents: list[Document] = []  # complete and interrupted jobs, in arrival order
        self.connections = 0
        self.received = bytearray()
        self._cond = threading.Condition()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._running = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> int:
        """Listen (on the same port as before after a stop); return the port."""
        if self._running:
            return self.port
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)
            self._accept_thread = None
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, self.port))
        lsock.listen(8)
        lsock.settimeout(0.1)
        self.port = lsock.getsockname()[1]
        self._listener = lsock
        self._running = True
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"virtual-printer-{self.port}", daemon=True
        )
        self._accept_thread.start()
        return self.port

    def stop(self) -> None:
        """Stop listening and drop every connection (a printer switched off)."""
        self._halt()
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _halt(self) -> None:
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> VirtualPrinter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ results
    @property
    def complete(self) -> list[Document]:
        """Jobs that ended with a cut."""
        with self._cond:
            return [d for d in self.documents if d.complete]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Document]:
        """Wait until ``count`` complete jobs have arrived; return them (maybe fewer)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                done = [d for d in self.documents if d.complete]
                left = deadline - time.monotonic()
                if len(done) >= count or left <= 0:
                    return done
                self._cond.wait(left)

    # ------------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        lsock = self._listener
        assert lsock is not None
        while self._running:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self._conns.add(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _blocked(self) -> bool:
        return self.paper == "out" or self.cover_open

    def _reply(self, req: StatusRequest) -> bytes | None:
        if not self.answer_status:
            return None
        if req.command == "DLE EOT":
            if req.n == 1:
                return bytes([0x12 | (0x08 if self._blocked() else 0)])
            if req.n == 2:
                cause = 0x12
                if self.cover_open:
                    cause |= 0x04
                if self.paper == "out":
                    cause |= 0x20
                return bytes([cause])
            if req.n == 3:
                return b"\x12"
            if req.n == 4:
                return bytes([0x12 | {"ok": 0, "low": 0x0C, "out": 0x6C}[self.paper]])
            return None
        if req.command == "GS r":
            if not self.answer_gs_r:
                return None
            if req.n in (1, 49):
                return bytes([{"ok": 0, "low": 0x03, "out": 0x0F}[self.paper]])
            return b"\x00"
        if req.command == "GS ( H":
            return b"\x37\x22" + req.payload[:4] + b"\x00"
        return None

    def _serve(self, conn: socket.socket) -> None:
        decoder = Decoder(columns=self.columns, codepages=self.codepages)
        seen = 0
        held = bytearray()  # data a blocked printer keeps in its buffer
        conn.settimeout(0.1)
        try:
            while self._running:
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    chunk = None
                except OSError:
                    break
                if chunk == b"":
                    break
                if chunk:
                    stop_at = self.stop_after_bytes
                    if stop_at is not None and seen + len(chunk) >= stop_at:
                        self._take(decoder, conn, chunk[: max(0, stop_at - seen)], held)
                        self.stop_after_bytes = None
                        self._collect(decoder, final=True)  # recorded before anyone sees the drop
                        self._halt()
                        break
                    limit = self.close_after_bytes
                    if limit is not None and seen + len(chunk) >= limit:
                        chunk = chunk[: max(0, limit - seen)]
                        self._take(decoder, conn, bytes(chunk), held)
                        break
                    seen += len(chunk)
                    self._take(decoder, conn, chunk, held)
                elif held and not self._blocked():
                    data = bytes(held)
                    held.clear()
                    self._take(decoder, conn, data, held, replay=True)
        finally:
            self._collect(decoder, final=True)  # before the client can see the connection close
            with contextlib.suppress(OSError):
                conn.close()
            with self._cond:
                self._conns.discard(conn)

    def _take(
        self,
        decoder: Decoder,
        conn: socket.socket,
        data: bytes,
        held: bytearray,
        replay: bool = False,
    ) -> None:
        if not replay:
            with self._cond:
                self.received += data
        # Real-time requests are answered on arrival, even by a blocked printer.
        if self._blocked() or held:
            for req in Decoder(columns=self.columns).feed(data):
                if req.command == "DLE EOT":
                    self._send(conn, self._reply(req))
            held += data
            return
        for req in decoder.feed(data):
            self._collect(decoder)
            if not (replay and req.command == "DLE EOT"):  # answered when it arrived
                if req.command == "GS r" and self.unsolicited:
                    self._send(conn, self.unsolicited)
                if req.command == "GS r" and self.confirm_delay_s > 0:
                    time.sleep(self.confirm_delay_s)
                self._send(conn, self._reply(req))
        self._collect(decoder)

    def _send(self, conn: socket.socket, reply: bytes | None) -> None:
        if reply:
            with contextlib.suppress(OSError):
                conn.sendall(reply)

    def _collect(self, decoder: Decoder, final: bool = False) -> None:
        if final:
            decoder.finish()
        new = decoder.documents[:]
        decoder.documents.clear()
        if not new:
            return
        with self._cond:
            self.documents.extend(new)
            self._cond.notify_all()
        if self.on_document is not None:
            for doc in new:
                self.on_document(doc)


def main(argv: list[str] | None = None) -> int:
    """``python -m tillpoint.printer.virtual``: print each received coupon, decoded."""
    ap = argparse.ArgumentParser(description="A virtual ESC/POS network printer (raw TCP).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--columns", type=int, default=48)
    ap.add_argument("--width-px", type=int, default=576)
    ap.add_argument("--png-dir", type=Path, help="also save each job as a PNG here")
    args = ap.parse_args(argv)
    counter = 0

    def show(doc: Document) -> None:
        nonlocal counter
        counter += 1
        # A job without a cut is a printer without a cutter's (`cut = false`) as often as
        # an interrupted one: the bytes cannot tell them apart, so the words say both.
        ended = "cut" if doc.complete else "not cut: a printer without a cutter, or interrupted"
        print(f"===== job {counter} ({ended}) =====")
        print(render_text(doc, args.columns), end="", flush=True)
        if args.png_dir is not None:
            args.png_dir.mkdir(parents=True, exist_ok=True)
            path = args.png_dir / f"job-{counter:04d}.png"
            render_png(doc, path, width_px=args.width_px, columns=args.columns)
            print(f"(saved {path})", flush=True)

    printer = VirtualPrinter(args.host, args.port, columns=args.columns, on_document=show)
    try:
        port = printer.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"virtual printer listening on {args.host}:{port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        printer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
