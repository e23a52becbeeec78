"""The opcode half of `safe_pickle`: pickle's opcode stream run on a stack machine of its own.

Every value on the machine's stacks and memo is plain data or an inert node: a global is a name
(`_Global`), checked against the few numpy and codecs names a dataset file uses and never imported;
REDUCE, NEWOBJ and BUILD only record a call (`_Call`). `_OPS` lists the opcodes it runs,
`_REFUSED_OPS` the rest, and `RefusedPickle` is raised for anything else; `safe_pickle` turns
the machine's result into data.
"""

from __future__ import annotations

import codecs
import reprlib
import struct


class RefusedPickle(ValueError):
    """The bytes are not a pickle of the data this module reads; the message says what was found."""


_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_BYTES = {("builtins", "bytes"), ("__builtin__", "bytes")}
_NDARRAY, _DTYPE, _ENCODE = ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")
_GLOBALS = _RECONSTRUCT | _FROMBUFFER | _BYTES | {_NDARRAY, _DTYPE, _ENCODE}
_VIEW = 1 << 16  # byte strings at least this long stay views into the file until they become values
_UNSET, _STOP = object(), object()


class _Global:
    """`module.name` as the pickle spells it; never imported."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


class _Call:
    """REDUCE (or NEWOBJ) of `func` on `args` at byte `at`, and what a BUILD gave it: nothing is called."""

    def __init__(self, func: object, args: tuple, newobj: bool, at: int):
        self.func, self.args, self.newobj, self.at, self.state = func, args, newobj, at, _UNSET

    def __repr__(self) -> str:  # not the func's own repr: a chain of calls would recurse
        func = repr(self.func) if isinstance(self.func, _Global) else f"<{type(self.func).__name__}>"
        return f"{'NEWOBJ of ' if self.newobj else ''}{func}(...)"


class _ByteArray:
    """BYTEARRAY8's payload: a view into the file until it becomes a value."""

    def __init__(self, view: memoryview):
        self.view = view


class _Show(reprlib.Repr):
    """Short reprs for messages (repr() itself fails on an int of over 4300 digits)."""

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= 64 else f"<int of {x.bit_length()} bits>"

    def repr_memoryview(self, x: memoryview, level: int) -> str:
        return f"<{x.nbytes} bytes>"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    def repr__ByteArray(self, x: _ByteArray, level: int) -> str:
        return f"<bytearray of {x.view.nbytes} bytes>"


_SHOW = _Show()
_SHOW.maxstring = _SHOW.maxother = 60


def _show(x: object) -> str:
    return _SHOW.repr(x)


# ---------------------------------------------------------------- the opcode stream


class _Machine:
    """Pickle's stack, mark stack and memo; every value on them is plain data or an inert node.

    `_OPS` says what each opcode does; an argument is read only after its length is checked.
    """

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.view = memoryview(self.data)
        self.pos = self.at = 0
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}

    def refuse(self, what: str) -> RefusedPickle:
        return RefusedPickle(f"{what} (byte {self.at})")

    def run(self) -> object:
        while True:
            self.at = self.pos
            if self.pos >= len(self.data):
                raise self.refuse("truncated: the pickle ends before its STOP opcode")
            code = self.data[self.pos:self.pos + 1]
            self.pos += 1
            if code not in _OPS:
                name = _REFUSED_OPS.get(code, f"0x{code.hex()}")
                raise self.refuse(f"opcode {name}, which a pickle of arrays, dicts and lists never needs")
            if _OPS[code][1](self) is _STOP:
                return self.pop()

    # -- arguments
    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            raise self.refuse(f"truncated: an argument of {_show(n)} bytes with {len(self.data) - self.pos} left")
        self.pos += n
        return self.view[self.pos - n:self.pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def sint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little", signed=True)

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.refuse("truncated: a text argument without its newline")
        line, self.pos = self.data[self.pos:end], end + 1
        return line

    def number(self, text: bytes, parse=lambda text: int(text, 0)) -> int | float:  # as pickle parses INT, LONG
        try:
            return parse(text)
        except ValueError:
            raise self.refuse(f"{_show(text)} is not a number") from None

    def text(self, raw: bytes | memoryview, encoding: str, errors: str = "strict") -> str:
        try:
            return str(raw, encoding, errors)
        except UnicodeDecodeError as e:
            raise self.refuse(f"a string that is not {encoding} ({e.reason})") from None

    def blob(self, n: int) -> bytes | memoryview:
        view = self.take(n)
        return view if n >= _VIEW else bytes(view)

    def frame(self) -> None:  # FRAME is a hint for buffering: the opcodes inside are read like any others
        n = self.uint(8)
        if n > len(self.data) - self.pos:
            raise self.refuse(f"truncated: a frame of {_show(n)} bytes with {len(self.data) - self.pos} left")

    def proto(self) -> None:
        if self.uint(1) > 5:
            raise self.refuse("a pickle protocol above 5")

    def int_text(self) -> int:
        text = self.line()  # Python 2 wrote bools as INT 00 and 01
        return False if text == b"00" else True if text == b"01" else self.number(text)

    def long_text(self) -> int:
        text = self.line()
        return self.number(text[:-1] if text.endswith(b"L") else text)

    def string_text(self) -> bytes:  # Python 2's str, quoted and escaped
        text = self.line()
        if len(text) < 2 or text[:1] != text[-1:] or text[:1] not in (b"'", b'"'):
            raise self.refuse("a STRING argument without its quotes")
        try:
            return codecs.escape_decode(text[1:-1])[0]
        except ValueError:
            raise self.refuse("a STRING argument with a broken escape") from None

    # -- the stacks
    def push(self, value: object) -> None:
        self.stack.append(value)

    def pop(self) -> object:
        if not self.stack:
            raise self.refuse("stack underflow")
        return self.stack.pop()

    def pop_n(self, n: int) -> list:
        if len(self.stack) < n:
            raise self.refuse("stack underflow")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def mark(self) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def pop_mark(self) -> list:
        if not self.marks:
            raise self.refuse("no MARK to pop back to")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def top(self, kind: type, op: str):
        if not self.stack or not isinstance(self.stack[-1], kind):
            found = type(self.stack[-1]).__name__ if self.stack else "an empty stack"
            raise self.refuse(f"{op} on {found}")
        return self.stack[-1]

    def extend(self, items: list, op: str) -> None:
        self.top(list, op).extend(items)

    def update(self, items: list, op: str) -> None:
        """SETITEM(S) into the dict on top of the stack; DICT into a new one."""
        if op == "DICT":
            self.push({})
        d = self.top(dict, op)
        if len(items) % 2:
            raise self.refuse("a dict key without its value")
        for key, value in zip(items[::2], items[1::2]):
            try:
                d[key] = value
            except TypeError:
                raise self.refuse(f"an unhashable dict key {_show(key)}") from None

    def put(self, index: int) -> None:
        if not self.stack or index < 0:
            raise self.refuse("a memo PUT of nothing or at a negative index")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise self.refuse(f"a memo GET of {_show(index)}, which was never PUT")
        self.push(self.memo[index])

    # -- calls, as inert nodes
    def global_(self, module: object, name: object) -> None:
        if not (type(module) is str and type(name) is str and (module, name) in _GLOBALS):
            spelled = f"{module}.{name}" if type(module) is type(name) is str else _show((module, name))
            raise self.refuse(f"pickle refers to {spelled}, which a dataset file never needs")
        self.push(_Global(module, name))

    def call(self, newobj: bool) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(args, tuple):
            raise self.refuse(f"a call with arguments {_show(args)}, not a tuple")
        self.push(_Call(func, args, newobj, self.at))

    def build(self) -> None:
        state = self.pop()
        node = self.top(_Call, "BUILD")
        if node.state is not _UNSET:
            raise self.refuse(f"a second BUILD of {node!r}")
        node.state = state


_M = _Machine
_UTF8 = ("utf-8", "surrogatepass")  # as pickle decodes
#: code -> (pickletools' name, what it does): the opcodes that pickles of arrays, dicts and lists use
_OPS = {
    b"\x80": ("PROTO", _M.proto),
    b"\x95": ("FRAME", _M.frame),
    b".": ("STOP", lambda m: _STOP),
    b"(": ("MARK", _M.mark),
    b"0": ("POP", lambda m: m.stack.pop() if m.stack else m.pop_mark()),
    b"1": ("POP_MARK", _M.pop_mark),
    b"2": ("DUP", lambda m: m.push(m.top(object, "DUP"))),
    b"p": ("PUT", lambda m: m.put(m.number(m.line(), int))),
    b"q": ("BINPUT", lambda m: m.put(m.uint(1))),
    b"r": ("LONG_BINPUT", lambda m: m.put(m.uint(4))),
    b"\x94": ("MEMOIZE", lambda m: m.put(len(m.memo))),
    b"g": ("GET", lambda m: m.get(m.number(m.line(), int))),
    b"h": ("BINGET", lambda m: m.get(m.uint(1))),
    b"j": ("LONG_BINGET", lambda m: m.get(m.uint(4))),
    b"N": ("NONE", lambda m: m.push(None)),
    b"\x88": ("NEWTRUE", lambda m: m.push(True)),
    b"\x89": ("NEWFALSE", lambda m: m.push(False)),
    b"I": ("INT", lambda m: m.push(m.int_text())),
    b"L": ("LONG", lambda m: m.push(m.long_text())),
    b"J": ("BININT", lambda m: m.push(m.sint(4))),
    b"K": ("BININT1", lambda m: m.push(m.uint(1))),
    b"M": ("BININT2", lambda m: m.push(m.uint(2))),
    b"\x8a": ("LONG1", lambda m: m.push(m.sint(m.uint(1)))),
    b"\x8b": ("LONG4", lambda m: m.push(m.sint(m.sint(4)))),
    b"F": ("FLOAT", lambda m: m.push(m.number(m.line(), float))),
    b"G": ("BINFLOAT", lambda m: m.push(struct.unpack(">d", m.take(8))[0])),
    b"S": ("STRING", lambda m: m.push(m.string_text())),
    b"T": ("BINSTRING", lambda m: m.push(m.blob(m.sint(4)))),
    b"U": ("SHORT_BINSTRING", lambda m: m.push(m.blob(m.uint(1)))),
    b"B": ("BINBYTES", lambda m: m.push(m.blob(m.uint(4)))),
    b"C": ("SHORT_BINBYTES", lambda m: m.push(m.blob(m.uint(1)))),
    b"\x8e": ("BINBYTES8", lambda m: m.push(m.blob(m.uint(8)))),
    b"\x96": ("BYTEARRAY8", lambda m: m.push(_ByteArray(m.take(m.uint(8))))),
    b"V": ("UNICODE", lambda m: m.push(m.text(m.line(), "raw-unicode-escape"))),
    b"X": ("BINUNICODE", lambda m: m.push(m.text(m.take(m.uint(4)), *_UTF8))),
    b"\x8c": ("SHORT_BINUNICODE", lambda m: m.push(m.text(m.take(m.uint(1)), *_UTF8))),
    b"\x8d": ("BINUNICODE8", lambda m: m.push(m.text(m.take(m.uint(8)), *_UTF8))),
    b")": ("EMPTY_TUPLE", lambda m: m.push(())),
    b"\x85": ("TUPLE1", lambda m: m.push(tuple(m.pop_n(1)))),
    b"\x86": ("TUPLE2", lambda m: m.push(tuple(m.pop_n(2)))),
    b"\x87": ("TUPLE3", lambda m: m.push(tuple(m.pop_n(3)))),
    b"t": ("TUPLE", lambda m: m.push(tuple(m.pop_mark()))),
    b"]": ("EMPTY_LIST", lambda m: m.push([])),
    b"l": ("LIST", lambda m: m.push(m.pop_mark())),
    b"a": ("APPEND", lambda m: m.extend(m.pop_n(1), "APPEND")),
    b"e": ("APPENDS", lambda m: m.extend(m.pop_mark(), "APPENDS")),
    b"}": ("EMPTY_DICT", lambda m: m.push({})),
    b"d": ("DICT", lambda m: m.update(m.pop_mark(), "DICT")),
    b"s": ("SETITEM", lambda m: m.update(m.pop_n(2), "SETITEM")),
    b"u": ("SETITEMS", lambda m: m.update(m.pop_mark(), "SETITEMS")),
    b"c": ("GLOBAL", lambda m: m.global_(m.text(m.line(), "utf-8"), m.text(m.line(), "utf-8"))),
    b"\x93": ("STACK_GLOBAL", lambda m: m.global_(*m.pop_n(2))),
    b"R": ("REDUCE", lambda m: m.call(newobj=False)),
    b"\x81": ("NEWOBJ", lambda m: m.call(newobj=True)),
    b"b": ("BUILD", _M.build),
}
#: the rest of pickle's opcodes: objects, extensions, sets and out-of-band buffers
_REFUSED_OPS = {
    b"P": "PERSID", b"Q": "BINPERSID", b"i": "INST", b"o": "OBJ", b"\x82": "EXT1", b"\x83": "EXT2", b"\x84": "EXT4",
    b"\x92": "NEWOBJ_EX", b"\x8f": "EMPTY_SET", b"\x90": "ADDITEMS", b"\x91": "FROZENSET", b"\x97": "NEXT_BUFFER",
    b"\x98": "READONLY_BUFFER",
}
