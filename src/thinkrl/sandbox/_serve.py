"""The program's side of a function-call test (runs INSIDE the sandbox, untrusted process).

Copied into the sandbox as ``main.py`` next to ``wire.py`` and ``solution.py``. It loads
``solution.py`` into a fresh namespace (``__name__`` is ``"__solution__"``, so a
``if __name__ == "__main__":`` demo block does not run), says ``{"ready": true}`` (or
``{"load_error": ...}``) on fd 4, then answers call requests read from fd 3, one JSON line
each: ``{"f": name, "a": [args]}`` -> ``{"ok": value}`` or ``{"err": "Type: message"}``,
values in the :mod:`wire` encoding.

Nothing here is trusted by the host: the program may replace or bypass all of it. The
host only ever believes values it decodes itself and checks with its own code.
"""

import builtins
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # -I leaves the script's directory off sys.path
import wire  # noqa: E402

REQUESTS, REPLIES = 3, 4


def send(message) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(REPLIES, data):]


def requests():
    buf = b""
    while True:
        chunk = os.read(REQUESTS, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


def answer(ns: dict, request: dict) -> dict:
    try:
        fn = ns[request["f"]]
        args = [wire.decode(a) for a in request["a"]]
        return {"ok": wire.encode(fn(*args))}
    except BaseException as e:  # noqa: BLE001 - the test decides what a failure means
        return {"err": f"{type(e).__name__}: {str(e)[:200]}"}


def main() -> None:
    with open(os.path.join(HERE, "solution.py"), encoding="utf-8") as f:
        source = f.read()
    ns = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        exec(compile(source, "solution.py", "exec"), ns)
    except BaseException as e:  # noqa: BLE001
        send({"load_error": f"{type(e).__name__}: {str(e)[:200]}"})
        return
    send({"ready": True})
    for request in requests():
        send(answer(ns, request))


main()
