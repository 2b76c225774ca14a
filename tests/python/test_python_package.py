"""Tests of the wbroker package itself: its public names and modules, and
the two steps of a load (Client._prepare_load() and apply()) that following
a model builds on."""
import gc
import os
import re
import subprocess
import sys
import tokenize

import pytest
import torch

import wbroker
from wbt_daemon import BUILD, ROOT


def small():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                               torch.nn.Linear(3, 2))


# The package re-exports exactly its public API, and every name of it has a
# docstring that help() shows.
def test_package_public_names():
    for name in wbroker.__all__:
        obj = getattr(wbroker, name)
        assert obj.__doc__, name
    for mod in ("errors", "dtypes", "publish", "load", "client"):
        assert getattr(wbroker, mod).__doc__, mod
    assert issubclass(wbroker.LoadError, RuntimeError)
    assert issubclass(wbroker.NotFoundError, KeyError)
    assert issubclass(wbroker.ConnectError, ConnectionError)


# A prepared load has its final report before anything changes; apply()
# then switches every matched tensor at once, and a second apply() does
# nothing.
def test_prepare_load_then_apply(daemon):
    src = small()
    target = small()
    torch.nn.init.zeros_(target[0].weight)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    x = torch.randn(5, 4)
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", src)
        c.publish("m", {k: v + 1 for k, v in src.state_dict().items()})
        pending = c._prepare_load(target, "m", version=1)
        assert pending.result.version == 1
        assert pending.result.missing_keys == []
        for k, v in target.state_dict().items():
            assert torch.equal(v, before[k]), k
        weight = target[0].weight
        assert pending.apply() is pending.result
        assert target[0].weight is weight   # the same Parameter, repointed
        assert torch.equal(target(x), src(x))
        pending.apply()
        assert torch.equal(target(x), src(x))


# A strict failure raises LoadError from _prepare_load() itself, with the
# report, and the model stays as it was.
def test_prepare_load_strict_failure(daemon):
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", {"0.weight": torch.ones(3, 4)})
        with pytest.raises(wbroker.LoadError) as e:
            c._prepare_load(target, "m", strict=True)
        assert "0.bias" in e.value.result.missing_keys
        r = c._prepare_load(target, "m", strict=False).result
        assert "0.bias" in r.missing_keys
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


# A prepared load that is never applied leaves the model alone and lets
# its version go when it is dropped.
def test_prepare_load_discarded(daemon):
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", small())
        pending = c._prepare_load(target, "m")
        del pending
        gc.collect()
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ constants

HEADER = open(os.path.join(ROOT, "include", "wbroker.h")).read()
PACKAGE = os.path.join(ROOT, "client", "python", "wbroker")


# The error codes and dtypes come from the library: the same table as the
# header's X-macros, names and numbers.
def test_constants_from_the_library():
    lib = wbroker._lib
    codes = {n: int(c) for n, c in
             re.findall(r"X\((E[A-Z0-9]+),\s*(-\d+),", HEADER)}
    assert codes and lib.ERROR_CODES == codes
    for name, code in codes.items():
        assert getattr(lib, "WB_" + name) == code
    dtypes = re.findall(r"X\(([A-Z0-9_]+), (\d+)\)",
                        HEADER[HEADER.index("#define WB_DTYPE_MAP"):])
    assert list(lib.DTYPE_NAMES) == [n for n, _ in dtypes]
    assert lib.DTYPE_SIZES == {n: int(s) for n, s in dtypes}
    e = wbroker.Error(lib.WB_ENOMODEL)
    assert (e.name, str(e)) == ("ENOMODEL", "no such model")


# The flags and enums that the library has no function for are mirrored by
# hand; they must agree with the header.
def test_mirrored_constants_match_the_header():
    lib = wbroker._lib
    for name in ("WB_MAX_DIMS", "WB_MAX_NAME"):
        m = re.search(r"#define %s (\d+)" % name, HEADER)
        assert int(m.group(1)) == getattr(lib, name)
    for name, value in re.findall(r"(WB_MAP_[A-Z_]+) = ([^,/]+)", HEADER):
        assert eval(value) == getattr(lib, name), name
    body = HEADER[HEADER.index("WB_KEYS_MISSING,"):
                  HEADER.index("WB_KEYS_COUNT")]
    keys = re.findall(r"(WB_KEYS_[A-Z_]+),", body)
    assert keys and [getattr(lib, k) for k in keys] == list(range(len(keys)))


# No module of the package spells an error code as a bare number.
@pytest.mark.parametrize("module", ["__init__", "client", "errors", "load",
                                    "publish", "dtypes"])
def test_no_bare_error_numbers(module):
    with open(os.path.join(PACKAGE, module + ".py")) as f:
        toks = list(tokenize.generate_tokens(f.readline))
    for a, b, c in zip(toks, toks[1:], toks[2:]):
        # A negative literal as an argument, a comparison or an item (a
        # slice such as text[:-2] is no error code).
        if a.string in ("(", ",", "=", "==", "!=", "in", "return") and \
                b.string == "-" and c.type == tokenize.NUMBER:
            pytest.fail("%s.py:%d: %s" % (module, c.start[0], c.line.strip()))


def fake_library(tmp_path, version_hex):
    """A shared library whose only function is wb_version()."""
    src = tmp_path / "fake.c"
    src.write_text("unsigned wb_version(void) { return %#x; }\n" % version_hex)
    so = tmp_path / "libfake.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(so), str(src)],
                   check=True)
    return str(so)


# A library of another version is refused at import, naming both versions
# and where the library is.
def test_import_refuses_another_library_version(tmp_path):
    so = fake_library(tmp_path, 0x000900)
    env = dict(os.environ, WBROKER_LIB=so,
               PYTHONPATH=os.path.join(ROOT, "client", "python"))
    r = subprocess.run([sys.executable, "-c", "import wbroker"], env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), r.stderr
    assert "package is version %s" % wbroker.__version__ in last
    assert "is version 0.9.0" in last
    assert os.path.realpath(so) in last
    # The real library of this build is accepted.
    env["WBROKER_LIB"] = os.path.join(BUILD, "libwbroker.so")
    r = subprocess.run([sys.executable, "-c", "import wbroker"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# help() shows each public call with its arguments' types and what it does.
def test_help_shows_hints_and_docs():
    import pydoc
    text = pydoc.render_doc(wbroker.Client, renderer=pydoc.plaintext)
    for frag in ("load_into(self, model: 'torch.nn.Module', name: 'str'",
                 "-> 'LoadResult'", "publish(self, name: 'str'",
                 "-> 'int'", "Dry run of load_into()",
                 "state_dict(self, name: 'str'"):
        assert frag in text, frag


# Each error code the package raises by kind gets its class: a FormatError
# is an Error (EFORMAT) and a ValueError; a missing model a KeyError.
def test_error_classes_by_code():
    from wbroker.errors import _raise
    lib = wbroker._lib
    for code, cls, base in ((lib.WB_EFORMAT, wbroker.FormatError, ValueError),
                            (lib.WB_ENOMODEL, wbroker.NotFoundError,
                             KeyError),
                            (lib.WB_ECLOSED, wbroker.ConnectError,
                             ConnectionError)):
        with pytest.raises(cls) as e:
            _raise(code, b"detail")
        assert isinstance(e.value, base) and isinstance(e.value,
                                                        wbroker.Error)
        assert (e.value.code, str(e.value)) == (code, "detail")
    assert str(wbroker.FormatError("bad header")) == "bad header"
