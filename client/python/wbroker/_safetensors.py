"""_safetensors.py -- Reads and validates safetensors file headers.

A safetensors file is an 8-byte little-endian header length N, N bytes of
UTF-8 JSON (possibly padded with trailing spaces) and the data buffer.  The
JSON maps each tensor name to {"dtype", "shape", "data_offsets"}, offsets
relative to the data buffer, plus an optional "__metadata__" object of
strings.  The checks follow client/safetensors.c: nothing in the file is
trusted, and every refusal is a FormatError saying why.  A "wbroker.tied"
metadata entry (a JSON object alias -> stored tensor, written for tied
weights) becomes Header.ties.

The JSON itself is hostile too.  Before json.loads sees it, its nesting is
bounded (MAX_DEPTH; a valid header needs three levels), so that deep
brackets cannot exhaust Python's recursion; numbers must fit in 64 bits
(as jansson's integers do) and be finite, the NaN and Infinity literals
are refused, and so are duplicate keys, text that is not UTF-8 and escaped
lone surrogates.  Whatever json.loads still raises (RecursionError,
ValueError, ...) becomes a FormatError.
"""
import json
import math
import re
import struct

from ._lib import DTYPE_SIZES, TIED_KEY, WB_MAX_DIMS, WB_MAX_NAME
from .errors import FormatError

PREFIX_LEN = 8                  # Bytes of the header-length prefix.
MAX_HEADER = 100 << 20          # Max JSON header bytes.
METADATA_KEY = "__metadata__"   # Key of the metadata object.
MAX_DEPTH = 64                  # Max nesting of JSON arrays and objects.
INT_MIN = -(1 << 63)            # Smallest integer in a header (int64).
INT_MAX = (1 << 63) - 1         # Largest integer in a header (int64).
INT_MAX_CHARS = 20              # Characters of INT_MIN, the longest int64.

# A JSON string, or the rest of the text after an unterminated quote: it
# always matches where it starts, so it never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
# Brackets only, with objects' braces turned into arrays' brackets.
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TOO_DEEP = b"[" * (MAX_DEPTH + 1)




class TensorEntry:
    """One tensor of a header: name, dtype name, shape, [begin, end)."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end


class Header:
    """A parsed header: tensors in data order, metadata, ties (alias ->
    stored tensor name) and data offset."""

    __slots__ = ("tensors", "metadata", "ties", "data_start", "data_len")

    def __init__(self, tensors, metadata, ties, data_start, data_len):
        self.tensors = tensors
        self.metadata = metadata
        self.ties = ties
        self.data_start = data_start
        self.data_len = data_len


def _check_depth(raw, what):
    """Raises FormatError if the JSON text raw (bytes) nests arrays and
    objects deeper than MAX_DEPTH.  Works on its brackets outside strings:
    each pass deletes every innermost pair "[]", so a pair still there
    after MAX_DEPTH passes encloses more than MAX_DEPTH levels; a run of
    MAX_DEPTH + 1 opening brackets is too deep at once.  Brackets that do
    not balance are left for json.loads to report."""
    b = _STRING.sub(b"", raw).translate(_AS_BRACKETS, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not b or _TOO_DEEP in b:
            break
        shorter = b.replace(b"[]", b"")
        if len(shorter) == len(b):
            return
        b = shorter
    if _TOO_DEEP in b or b"[]" in b:
        raise FormatError("%s nests deeper than %d levels of arrays and "
                          "objects" % (what, MAX_DEPTH))


def _check_text(s, what):
    """Raises FormatError if the str s holds a lone surrogate (an escape
    such as \\ud800 that is not half of a pair), which is not Unicode."""
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("%s %r holds a lone surrogate, which is not "
                              "valid Unicode" % (what, s[:64])) from None


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        _check_text(k, "key")
        if k in seen:
            raise FormatError("duplicate key %r in the header" % (k[:64],))
        if isinstance(v, str):
            _check_text(v, "string")
        seen[k] = v
    return seen


def _no_constant(name):
    raise FormatError("not valid JSON: the literal %s is not a number JSON "
                      "allows" % name)


def _int64(text):
    """An integer of the header, which must fit in 64 bits (checked on its
    length first, so that a million digits cost nothing)."""
    v = int(text) if len(text) <= INT_MAX_CHARS else None
    if v is None or not INT_MIN <= v <= INT_MAX:
        raise FormatError("integer %s%s does not fit in 64-bit signed "
                          "integers" % (text[:32],
                                        "..." if len(text) > 32 else ""))
    return v


def _finite(text):
    """A real number of the header, which must be finite."""
    v = float(text)
    if not math.isfinite(v):
        raise FormatError("number %s%s is out of range" % (
            text[:32], "..." if len(text) > 32 else ""))
    return v


def _loads(text, what, raw=None):
    """json.loads of text (str, whose UTF-8 bytes raw may already hold)
    with every check of the module docstring; what names it in messages.
    Raises FormatError only."""
    _check_depth(text.encode("utf-8") if raw is None else raw, what)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant, parse_int=_int64,
                          parse_float=_finite)
    except FormatError:
        raise
    except RecursionError:
        raise FormatError("%s nests too deeply to parse" % what) from None
    except (ValueError, OverflowError) as e:     # JSONDecodeError and others.
        raise FormatError("%s is not valid JSON: %s" % (what, e)) from None


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_name(name):
    if not name:
        raise FormatError("empty tensor name")
    _check_text(name, "tensor name")
    raw = name.encode("utf-8")
    if len(raw) > WB_MAX_NAME:
        raise FormatError("tensor name of %d bytes exceeds %d: %r..."
                          % (len(raw), WB_MAX_NAME, name[:40]))
    if "\0" in name:
        raise FormatError("tensor name %r contains a NUL byte" % (name,))


def _tensor(name, entry):
    _check_name(name)
    if not isinstance(entry, dict):
        raise FormatError("tensor %r: entry is not an object" % (name,))
    dtype = entry.get("dtype")
    if not isinstance(dtype, str):
        raise FormatError('tensor %r: "dtype" missing or not a string'
                          % (name,))
    if dtype not in DTYPE_SIZES:
        raise FormatError("tensor %r: unknown dtype %r" % (name, dtype[:32]))
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise FormatError('tensor %r: "shape" missing or not an array'
                          % (name,))
    if len(shape) > WB_MAX_DIMS:
        raise FormatError("tensor %r: %d dimensions exceed %d"
                          % (name, len(shape), WB_MAX_DIMS))
    for i, s in enumerate(shape):
        if not _is_uint(s):
            raise FormatError("tensor %r: shape[%d] is not a non-negative "
                              "integer" % (name, i))
    offs = entry.get("data_offsets")
    if not isinstance(offs, list) or len(offs) != 2:
        raise FormatError('tensor %r: "data_offsets" is not an array of two '
                          "integers" % (name,))
    begin, end = offs
    if not _is_uint(begin) or not _is_uint(end):
        raise FormatError("tensor %r: data_offsets are not two non-negative "
                          "integers" % (name,))
    if end < begin:
        raise FormatError("tensor %r: data_offsets [%d, %d] end before they "
                          "begin" % (name, begin, end))
    need = DTYPE_SIZES[dtype]
    for s in shape:
        need *= s
    if need >= 1 << 64:
        raise FormatError("tensor %r: shape's byte size overflows 64 bits"
                          % (name,))
    if end - begin != need:
        raise FormatError("tensor %r: data_offsets span %d bytes but %s "
                          "shape needs %d" % (name, end - begin, dtype, need))
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _metadata(obj):
    if not isinstance(obj, dict):
        raise FormatError('"%s" is not an object' % METADATA_KEY)
    for k, v in obj.items():
        if not isinstance(v, str):
            raise FormatError("metadata value of %r is not a string"
                              % (k[:64],))
        if "\0" in k:
            raise FormatError("metadata key %r contains a NUL byte" % (k,))
        if "\0" in v:
            raise FormatError("metadata value of %r contains a NUL byte"
                              % (k[:64],))
    return dict(obj)


def parse_header(head, file_size):
    """Parses the header at the start of a file of file_size bytes.

    head must hold the 8-byte prefix and the whole JSON header (more bytes
    are ignored).  Returns a Header whose tensors are in data order; raises
    FormatError for an invalid file."""
    if file_size < PREFIX_LEN or len(head) < PREFIX_LEN:
        raise FormatError("file of %d bytes is shorter than the 8-byte "
                          "header length" % file_size)
    (n,) = struct.unpack_from("<Q", head, 0)
    if n > MAX_HEADER:
        raise FormatError("header length %d exceeds the limit of %d bytes"
                          % (n, MAX_HEADER))
    if n > file_size - PREFIX_LEN:
        raise FormatError("header length %d runs past the end of the "
                          "%d-byte file" % (n, file_size))
    if len(head) < PREFIX_LEN + n:
        raise FormatError("truncated header: %d of %d bytes"
                          % (len(head) - PREFIX_LEN, n))
    raw = bytes(head[PREFIX_LEN:PREFIX_LEN + n])
    if not raw.startswith(b"{"):
        raise FormatError("JSON header does not start with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("header is not valid UTF-8: %s" % e) from None
    obj = _loads(text, "header", raw)
    if not isinstance(obj, dict):
        raise FormatError("header JSON is not an object")
    metadata = {}
    tensors = []
    for name, entry in obj.items():
        if name == METADATA_KEY:
            metadata = _metadata(entry)
        else:
            tensors.append(_tensor(name, entry))
    tensors.sort(key=lambda t: (t.begin, t.end))
    data_start = PREFIX_LEN + n
    data_len = file_size - data_start
    pos, prev = 0, None
    for t in tensors:
        if t.begin < pos:
            raise FormatError("tensor %r at [%d, %d) overlaps %r"
                              % (t.name, t.begin, t.end, prev.name))
        if t.begin > pos:
            raise FormatError("hole in the data buffer: [%d, %d) before "
                              "tensor %r belongs to no tensor"
                              % (pos, t.begin, t.name))
        pos, prev = t.end, t
    if pos != data_len:
        raise FormatError("tensors cover %d bytes but the data buffer (file "
                          "size - %d) has %d" % (pos, data_start, data_len))
    return Header(tensors, metadata, _ties(metadata, tensors), data_start,
                  data_len)


def _ties(metadata, tensors):
    """Takes the TIED_KEY entry out of metadata and returns its ties."""
    if TIED_KEY not in metadata:
        return {}
    names = {t.name for t in tensors}
    ties = _loads(metadata.pop(TIED_KEY), "metadata %r" % TIED_KEY)
    if not isinstance(ties, dict):
        raise FormatError("metadata %r is not a JSON object of names"
                          % TIED_KEY)
    for alias, stored in ties.items():
        if alias in names or not isinstance(stored, str) or \
                stored not in names:
            raise FormatError("metadata %r: %r must tie a new name to a "
                              "stored tensor" % (TIED_KEY, alias[:64]))
        if "\0" in alias:
            raise FormatError("metadata %r: alias %r contains a NUL byte"
                              % (TIED_KEY, alias))
    return ties


def read_header(f, file_size):
    """Reads and parses the header of the open binary file f (at offset 0)."""
    head = f.read(PREFIX_LEN)
    if len(head) < PREFIX_LEN:
        raise FormatError("file of %d bytes is shorter than the 8-byte "
                          "header length" % file_size)
    (n,) = struct.unpack("<Q", head)
    if n <= MAX_HEADER and n <= file_size - PREFIX_LEN:
        rest = bytearray()
        while len(rest) < n:
            chunk = f.read(n - len(rest))
            if not chunk:
                break
            rest += chunk
        head += bytes(rest)
    return parse_header(head, file_size)

