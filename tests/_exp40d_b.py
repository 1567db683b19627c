import os, time, threading
from tests.test_review39_left39 import _CountingLine, _until, _pty_holds
from tillpoint.printer.config import PrinterConfig
from tillpoint.printer.transport import SerialTransport
RATE=1920
HELD=_pty_holds()
master, slave = os.openpty()
line = _CountingLine(master, RATE)
t = SerialTransport(PrinterConfig(kind="serial", device=os.ttyname(slave), baudrate=RATE*10, write_timeout_s=30.0))
t.open()
job = b"\x1b@" + b"x"*(HELD + RATE*3) + b"\n\x1dV\x00"
out=[]
def w():
    try: t.write(job); out.append("whole")
    except Exception as e: out.append(repr(e))
th=threading.Thread(target=w, daemon=True); th.start()
_until(lambda: len(line.got) >= len(job) - 17142 - RATE*1.0, 60)
print("abort at got", len(line.got), "of", len(job))
t0=time.monotonic(); t.abort()
time.sleep(0.3)
line.close(); os.close(master)   # the printer goes away mid-grace
th.join(10)
print("outcome", out, "after", round(time.monotonic()-t0,2), "alive", th.is_alive())
t.close(); os.close(slave)
