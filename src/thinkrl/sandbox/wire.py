"""A canonical, type-tagged encoding of plain Python values for crossing the sandbox boundary.

Values travel as JSON built from tagged lists: ``["i", "0x2a"]`` (int, hex so huge ints
need no digit limit), ``["b", 1]``, ``["f", "0.1"]`` (float via ``repr``: exact, inf/nan
included), ``["c", re, im]``, ``["s", "..."]``, ``["y", "hex"]`` (bytes), ``["n"]``,
``["l", [...]]``, ``["t", [...]]``, ``["d", [[k, v], ...]]``, ``["S", [...]]`` (set),
``["F", [...]]`` (frozenset).

:func:`decode` is the trusted side: it builds only exact built-in types (``type(x) is int``
and so on) from the tags, with a depth limit, so nothing the program sends can carry
behaviour (no ``__eq__`` that is always true, no list or int subclass) into the host's
comparison. :func:`encode` accepts subclasses of the built-in types and encodes their
built-in value (a ``defaultdict`` as a dict, an ``int`` subclass as its int value); any
other object raises :class:`WireError`.

This file is also copied verbatim into the sandbox (the program's side of the RPC), so it
imports only the standard library. What it leaves out: framing and transport (``runner``).
"""

from __future__ import annotations

MAX_DEPTH = 100


class WireError(ValueError):
    """A value that cannot be encoded, or a message that is not a valid encoding."""


def _seq(items, depth: int) -> list:
    return [encode(v, depth + 1) for v in items]


def encode(x, depth: int = 0):
    """The tagged form of ``x`` (built-in scalar and container types only)."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if x is None:
        return ["n"]
    if isinstance(x, bool):
        return ["b", 1 if x else 0]
    if isinstance(x, int):
        return ["i", hex(int.__index__(x))]
    if isinstance(x, float):
        return ["f", float.__repr__(float(x))]
    if isinstance(x, complex):
        c = complex(x)
        return ["c", float.__repr__(c.real), float.__repr__(c.imag)]
    if isinstance(x, str):
        return ["s", str.__str__(x)]
    if isinstance(x, (bytes, bytearray)):
        return ["y", bytes(x).hex()]
    if isinstance(x, tuple):
        return ["t", _seq(tuple.__iter__(x), depth)]
    if isinstance(x, list):
        return ["l", _seq(list.__iter__(x), depth)]
    if isinstance(x, dict):
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(x)]]
    if isinstance(x, frozenset):
        return ["F", _seq(frozenset.__iter__(x), depth)]
    if isinstance(x, set):
        return ["S", _seq(set.__iter__(x), depth)]
    raise WireError(f"cannot send a {type(x).__name__} value (plain built-in types only)")


def _items(payload, depth: int) -> list:
    if type(payload) is not list:
        raise WireError("container payload is not a list")
    return [decode(v, depth + 1) for v in payload]


def _float(s) -> float:
    if type(s) is not str or len(s) > 64:
        raise WireError("bad float")
    return float(s)


def _int(s) -> int:
    if type(s) is not str or not s.lstrip("-").startswith("0x"):
        raise WireError("bad int")
    return int(s, 16)


def _dict(payload, depth: int) -> dict:
    if type(payload) is not list:
        raise WireError("dict payload is not a list")
    out = {}
    for pair in payload:
        if type(pair) is not list or len(pair) != 2:
            raise WireError("bad dict item")
        out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
    return out


def _str(s) -> str:
    if type(s) is not str:
        raise WireError("bad str")
    return s


def _bool(v) -> bool:
    if type(v) is not int or v not in (0, 1):
        raise WireError("bad bool")
    return v == 1


DECODERS = {
    "n": (0, lambda d: None),
    "b": (1, lambda d, v: _bool(v)),
    "i": (1, lambda d, s: _int(s)),
    "f": (1, lambda d, s: _float(s)),
    "c": (2, lambda d, re, im: complex(_float(re), _float(im))),
    "s": (1, lambda d, s: _str(s)),
    "y": (1, lambda d, s: bytes.fromhex(_str(s))),
    "l": (1, lambda d, p: _items(p, d)),
    "t": (1, lambda d, p: tuple(_items(p, d))),
    "d": (1, lambda d, p: _dict(p, d)),
    "S": (1, lambda d, p: set(_items(p, d))),
    "F": (1, lambda d, p: frozenset(_items(p, d))),
}


def decode(node, depth: int = 0):
    """The plain value a tagged node stands for; :class:`WireError` for anything malformed."""
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    if type(node) is not list or not node or type(node[0]) is not str or node[0] not in DECODERS:
        raise WireError("not a tagged value")
    arity, build = DECODERS[node[0]]
    if len(node) != arity + 1:
        raise WireError(f"tag {node[0]!r} takes {arity} field(s)")
    try:
        return build(depth, *node[1:])
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # unhashable key, bad hex, ...
        raise WireError(f"bad {node[0]!r} value: {e}") from None
