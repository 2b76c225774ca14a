"""Hostile safetensors headers against the library's parser.

Each case is a JSON header (bytes, so that it can be anything) and a data
buffer.  The one parser, client/safetensors.c behind `wbroker import` and
the Python package's publish_file (tests/python/test_python_api.py), must
refuse every one as EFORMAT before it connects to any daemon -- never
crash, recurse without bound or accept it.  A few well-formed headers
close to the limits must still parse.  The third column of HOSTILE says
what is wrong with a case (the words of the Python parser the package had
before it used the library's).
"""
import json
import os
import struct
import subprocess
import time

import pytest

from wbt_daemon import BUILD

DEEP = 100_000                  # Nesting depth of the deep cases.


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    """One tensor entry as JSON text; a str shape or offsets is put in as
    JSON text of its own."""
    def text(v):
        return v if isinstance(v, str) else json.dumps(list(v))
    return ('{"dtype": %s, "shape": %s, "data_offsets": %s}'
            % (json.dumps(dtype), text(shape), text(offsets)))


def one(text_entry, name="a"):
    """A header of one tensor whose entry is the given JSON text."""
    return ('{"%s": %s}' % (name, text_entry)).encode()


def with_meta(meta_text, tensors='"a": ' + entry()):
    """A header of tensor a (4 bytes) and the given metadata JSON text."""
    return ('{%s, "__metadata__": %s}' % (tensors, meta_text)).encode()


def tied(value):
    """A header of tensor a whose wbroker.tied entry is the string value."""
    return with_meta(json.dumps({"wbroker.tied": value}))


F4 = b"\0" * 4

# name: (header bytes, data bytes, fragment of the FormatError's message).
HOSTILE = {
    # Nesting: deep arrays and objects, balanced or not, anywhere.
    "deep_arrays": (b'{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}", b"",
                    "nests deeper"),
    "deep_objects": (b'{"a": ' + b'{"k": ' * DEEP + b"1" + b"}" * DEEP + b"}",
                     b"", "nests deeper"),
    "deep_unbalanced": (b"{" + b"[" * DEEP, b"", "nests deeper"),
    "deep_interleaved": (b'{"a": ' + b"[[]," * DEEP + b"1" + b"]" * DEEP +
                         b"}", b"", "nests deeper"),
    "deep_in_entry": (('{"a": {"dtype": "F32", "shape": [1], '
                       '"data_offsets": [0, 4], "x": ' + "[" * DEEP +
                       "]" * DEEP + "}}").encode(), F4, "nests deeper"),
    "deep_metadata": (with_meta('{"k": ' + "[" * DEEP + "]" * DEEP + "}"),
                      F4, "nests deeper"),
    "deep_tie": (tied("[" * DEEP + "]" * DEEP), F4, "nests deeper"),
    "deep_tie_unbalanced": (tied("{" * DEEP), F4, "nests deeper"),
    "deep_in_a_string_is_fine_but_bad_dtype":
        (one(entry(dtype="[" * DEEP)), F4, "unknown dtype"),

    # Numbers: too large for 64 bits, too many digits, not finite.
    "int_digits": (one(entry(shape="[%s]" % ("9" * 5000))), F4, "64-bit"),
    "int_digits_in_extra": (one('{"x": %s}' % ("1" * 100000)), b"",
                            "64-bit"),
    "int_2_63_shape": (one(entry(shape=[2 ** 63, 0], offsets=[0, 0])), b"",
                       "64-bit"),
    "int_2_64_offsets": (one(entry(shape=[0], offsets=[2 ** 64, 2 ** 64])),
                         b"", "64-bit"),
    "int_negative_huge": (one('{"x": -%s}' % ("9" * 30)), b"", "64-bit"),
    "float_overflow": (one('{"x": 1e999999}'), b"", "out of range"),
    "float_overflow_shape": (one(entry(shape="1e400")), F4, "out of range"),
    "float_shape": (one(entry(shape="[1.0]")), F4, "shape[0]"),
    "exponent_shape": (one(entry(shape=[1], offsets="[0, 4e0]")), F4,
                       "data_offsets"),
    "bool_offsets": (one(entry(shape=[0], offsets="[false, false]")), b"",
                     "data_offsets"),
    "nan": (one(entry(shape="[NaN]")), F4, "NaN"),
    "infinity": (one('{"x": Infinity}'), b"", "Infinity"),
    "minus_infinity": (one(entry(offsets="[0, -Infinity]")), F4,
                       "-Infinity"),
    "nan_in_metadata": (with_meta('{"k": NaN}'), F4, "NaN"),
    "nan_in_tie": (tied('{"b": NaN}'), F4, "NaN"),

    # Text: not UTF-8, lone surrogates, control characters, NUL.
    "not_utf8": (b'{"\xff\xfe": ' + entry().encode() + b"}", F4, "UTF-8"),
    "encoded_surrogate": (b'{"\xed\xa0\x80": ' + entry().encode() + b"}", F4,
                          "UTF-8"),
    "overlong_utf8": (b'{"\xc0\xaf": ' + entry().encode() + b"}", F4,
                      "UTF-8"),
    "escaped_lone_surrogate_name": (one(entry(), name="\\ud800"), F4,
                                    "surrogate"),
    "escaped_lone_surrogate_metadata": (with_meta('{"k": "\\udfff"}'), F4,
                                        "surrogate"),
    "escaped_lone_surrogate_tie": (tied('{"\\ud800": "a"}'), F4,
                                   "surrogate"),
    "raw_newline_in_string": (one(entry(), name="a\nb"), F4, "JSON"),
    "nul_in_name": (one(entry(), name="a\\u0000b"), F4, "NUL"),
    "nul_in_tie_alias": (tied('{"b\\u0000": "a"}'), F4, "NUL"),

    # Keys: duplicates at every level.
    "duplicate_tensor": (('{"a": %s, "a": %s}' % (entry(), entry())).encode(),
                         F4, "duplicate"),
    "duplicate_field": (one('{"dtype": "F32", "dtype": "F32", "shape": [1], '
                            '"data_offsets": [0, 4]}'), F4, "duplicate"),
    "duplicate_metadata": (with_meta('{"k": "1", "k": "2"}'), F4,
                           "duplicate"),
    "duplicate_metadata_object": (with_meta('{}, "__metadata__": {}'), F4,
                                  "duplicate"),
    "duplicate_tie": (tied('{"b": "a", "b": "a"}'), F4, "duplicate"),

    # Top level: not one object.
    "top_array": (b"[" + entry().encode() + b"]", F4, "'{'"),
    "top_string": (b'"abc"', b"", "'{'"),
    "top_null": (b"null", b"", "'{'"),
    "top_number": (b"12345678", b"", "'{'"),
    "leading_space": (b" {}", b"", "'{'"),
    "empty": (b"", b"", "'{'"),
    "two_objects": (b"{}{}", b"", "JSON"),
    "trailing_garbage": (b"{} x", b"", "JSON"),
    "truncated": (b'{"a": {"dtype": "F3', b"", "JSON"),
    "unterminated_string": (b'{"a' + b'\\"' * 1000, b"", "JSON"),

    # Entries: wrong types, out-of-range and overlapping offsets.
    "entry_array": (one("[1, 2]"), b"", "not an object"),
    "entry_null": (one("null"), b"", "not an object"),
    "dtype_number": (one(entry(dtype=4)), F4, "dtype"),
    "dtype_long": (one(entry(dtype="F" * 100000)), F4, "unknown dtype"),
    "shape_string": (one(entry(shape='"abc"')), F4, "shape"),
    "shape_of_strings": (one(entry(shape=["1"])), F4, "shape[0]"),
    "shape_negative": (one(entry(shape=[-1])), F4, "shape[0]"),
    "too_many_dims": (one(entry(shape=[1] * 17)), F4, "17 dimensions"),
    "offsets_three": (one(entry(offsets=[0, 4, 8])), F4, "data_offsets"),
    "offsets_negative": (one(entry(offsets=[-4, 0])), F4, "data_offsets"),
    "offsets_reversed": (one(entry(shape=[0], offsets=[4, 0])), F4,
                         "end before"),
    "offsets_past_data": (one(entry(shape=[2 ** 40], dtype="U8",
                                    offsets=[0, 2 ** 40])), F4, "cover"),
    "offsets_start_past_data": (one(entry(offsets=[2 ** 40, 2 ** 40 + 4])),
                                F4, "hole"),
    "offsets_max_int": (one(entry(shape=[0], offsets=[2 ** 63 - 1,
                                                      2 ** 63 - 1])), b"",
                        "hole"),
    "overlap": (('{"a": %s, "b": %s}' % (entry(shape=[2], offsets=[0, 8]),
                                         entry(offsets=[4, 8]))).encode(),
                b"\0" * 8, "overlaps"),
    "same_offsets": (('{"a": %s, "b": %s}' % (entry(), entry())).encode(),
                     F4, "overlaps"),
    "hole": (one(entry(offsets=[4, 8])), b"\0" * 8, "hole"),

    # Sizes: dtype size times shape beyond 64 bits.
    "product_overflow": (one(entry(shape=[2 ** 32, 2 ** 32],
                                   offsets=[0, 0])), b"", "overflows"),
    "product_overflow_by_dtype": (one(entry(dtype="F64", shape=[2 ** 61],
                                            offsets=[0, 0])), b"",
                                  "overflows"),
    "product_overflow_16_dims": (one(entry(dtype="U8", shape=[16] * 16,
                                           offsets=[0, 0])), b"",
                                 "overflows"),
    "product_just_past": (one(entry(dtype="U8", shape=[2 ** 32, 2 ** 32],
                                    offsets=[0, 0])), b"", "overflows"),

    # Names and metadata.
    "empty_name": (one(entry(), name=""), F4, "empty"),
    "long_name": (one(entry(), name="n" * 1025), F4, "exceeds"),
    "metadata_array": (with_meta("[]"), F4, "not an object"),
    "metadata_number_value": (with_meta('{"k": 1}'), F4, "not a string"),
    "metadata_nested_value": (with_meta('{"k": {"a": "b"}}'), F4,
                              "not a string"),

    # Ties (the wbroker.tied metadata entry).
    "tie_not_json": (tied("{"), F4, "wbroker.tied"),
    "tie_array": (tied("[1]"), F4, "wbroker.tied"),
    "tie_list_value": (tied('{"b": ["a"]}'), F4, "wbroker.tied"),
    "tie_object_value": (tied('{"b": {"a": 1}}'), F4, "wbroker.tied"),
    "tie_number_value": (tied('{"b": 1}'), F4, "wbroker.tied"),
    "tie_to_missing": (tied('{"b": "nope"}'), F4, "wbroker.tied"),
    "tie_alias_is_tensor": (tied('{"a": "a"}'), F4, "wbroker.tied"),
    "tie_huge_int": (tied('{"b": %s}' % ("7" * 10000)), F4, "64-bit"),
}

# Well-formed headers at the edges: they must parse.
FINE = {
    "max_int_dim_times_zero": (one(entry(shape=[2 ** 63 - 1, 0],
                                         offsets=[0, 0])), b""),
    "brackets_in_strings": (with_meta('{"k": "%s"}' % ("[{" * DEEP)), F4),
    "escaped_quotes": (with_meta('{"k\\"[": "\\\\\\"{["}'), F4),
    "surrogate_pair": (one(entry(), name="\\ud83d\\ude00"), F4),
    "negative_and_float_extras": (one('{"dtype": "F32", "shape": [1], '
                                      '"data_offsets": [0, 4], "x": '
                                      '[-9223372036854775808, 1.5e300]}'),
                                  F4),
    "padding": (one(entry()) + b"    ", F4),
    "tie": (tied('{"b": "a"}'), F4),
}


def image(header, data):
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_c_parser_refuses_hostile_header(case, tmp_path):
    """`wbroker import` (client/safetensors.c) refuses the same headers as
    EFORMAT, before it connects to any daemon."""
    header, data, _ = HOSTILE[case]
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(image(header, data))
    p = subprocess.run([os.path.join(BUILD, "wbroker"), "--socket",
                        str(tmp_path / "none.sock"), "--json", "import",
                        str(path), "m"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert json.loads(p.stdout)["error"] == "EFORMAT", p.stdout


@pytest.mark.parametrize("case", sorted(FINE))
def test_c_parser_accepts_edge_header(case, tmp_path):
    """The C parser accepts the edge headers too: `wbroker import` gets as
    far as connecting (to no daemon)."""
    header, data = FINE[case]
    path = tmp_path / "edge.safetensors"
    path.write_bytes(image(header, data))
    p = subprocess.run([os.path.join(BUILD, "wbroker"), "--socket",
                        str(tmp_path / "none.sock"), "--json", "import",
                        str(path), "m"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"] == "ECONNECT", p.stdout


def test_c_parser_refuses_a_large_deep_header_quickly(tmp_path):
    """A header near the 100 MiB cap that is all brackets is refused in
    bounded time, whatever its shape."""
    n = 20 << 20
    path = tmp_path / "deep.safetensors"
    for header in (b"{" + b"[" * n, b'{"a":' + b"[" * n + b"]" * n + b"}",
                   b'{"a":' + b"[[]," * (n // 4) + b"]" * (n // 4) + b"}"):
        path.write_bytes(image(header, b""))
        t = time.monotonic()
        p = subprocess.run([os.path.join(BUILD, "wbroker"), "--socket",
                            str(tmp_path / "none.sock"), "--json", "import",
                            str(path), "m"], capture_output=True, text=True,
                           timeout=60)
        assert json.loads(p.stdout)["error"] == "EFORMAT", p.stdout
        assert time.monotonic() - t < 10
