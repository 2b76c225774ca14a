"""Tests of what users install: the wheel (`make wheel`) and `make install`.

The wheel is built, checked (its libwbroker.so needs nothing but glibc and
exports nothing but wb_*), installed with pip into a fresh virtual
environment that does not see the system's packages, and used from there
against a real daemon with WBROKER_LIB unset.  `make install` goes into a
DESTDIR, twice with different prefixes; the tree is checked file by file,
a C program is built against the installed wbroker.pc and run against a
real daemon, and the installed Python package is used as installed.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from wbt_daemon import BUILD, ROOT

BUILD_ARG = "BUILD=" + os.environ.get("WB_BUILD", "build")
HEADER = os.path.join(ROOT, "include", "wbroker.h")
GLIBC_LIBS = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2",
              "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}


def version():
    text = open(HEADER).read()
    return ".".join(re.search(r"#define WB_VERSION_%s (\d+)" % p, text)
                    .group(1) for p in ("MAJOR", "MINOR", "PATCH"))


def make(*args):
    """Runs make at the top of the checkout; returns its output."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR")}
    r = subprocess.run(["make", "-C", ROOT, "--no-print-directory", BUILD_ARG]
                       + list(args), env=env, capture_output=True, text=True)
    assert r.returncode == 0, "make %s failed:\n%s\n%s" % (
        " ".join(args), r.stdout[-4000:], r.stderr[-4000:])
    return r.stdout


def clean_env(**extra):
    """The environment of a process that uses only what was installed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WBROKER_LIB", "PYTHONPATH", "PYTHONHOME",
                        "LD_LIBRARY_PATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


def needed(path):
    out = run(["readelf", "-dW", path], check=True).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", out))


def soname(path):
    out = run(["readelf", "-dW", path], check=True).stdout
    return re.search(r"\(SONAME\)\s+Library soname: \[([^]]+)\]", out).group(1)


# ------------------------------------------------------------------ wheel

@pytest.fixture(scope="module")
def wheel():
    """Path of the wheel `make wheel` builds."""
    make("wheel")
    found = glob.glob(os.path.join(BUILD, "wheel", "dist", "*.whl"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def wheel_lib(wheel, tmp_path_factory):
    """The libwbroker.so inside the wheel, extracted."""
    d = tmp_path_factory.mktemp("wheel-lib")
    with zipfile.ZipFile(wheel) as z:
        z.extract("wbroker/libwbroker.so", d)
    return str(d / "wbroker" / "libwbroker.so")


def test_wheel_name_and_contents(wheel):
    name = os.path.basename(wheel)
    m = re.fullmatch(r"wbroker-(.+)-py3-none-manylinux_(\d+)_(\d+)_(\w+)\.whl",
                     name)
    assert m, name
    assert m.group(1) == version(), "wheel and header disagree on the version"
    assert m.group(4) == os.uname().machine
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        wheel_meta = z.read("wbroker-%s.dist-info/WHEEL" % m.group(1)).decode()
        info = z.getinfo("wbroker/libwbroker.so")
    modules = {os.path.relpath(p, os.path.join(ROOT, "client", "python"))
               for p in glob.glob(os.path.join(ROOT, "client", "python",
                                               "wbroker", "**", "*.py"),
                                  recursive=True)}
    assert modules <= names, modules - names
    assert "wbroker/libwbroker.so" in names
    assert (info.external_attr >> 16) & 0o111, "the library is not executable"
    assert "Root-Is-Purelib: false" in wheel_meta
    assert "Tag: py3-none-manylinux_" in wheel_meta
    assert not [n for n in names if n.endswith(".pyc") or "/build/" in n]


def test_wheel_library_needs_only_glibc(wheel, wheel_lib):
    assert needed(wheel_lib) <= GLIBC_LIBS, needed(wheel_lib)
    assert soname(wheel_lib) == "libwbroker.so.%s" % version().split(".")[0]
    ldd = run(["ldd", wheel_lib], check=True).stdout
    for line in ldd.splitlines():
        lib = line.split()[0]
        assert lib in GLIBC_LIBS or lib.startswith("linux-vdso") or \
            lib.startswith("/lib64/ld-linux"), "ldd: " + line
    # Exports the API and nothing else: the msgpack-c, PCRE2 and jansson
    # inside stay private.
    dyn = run(["nm", "-D", "--defined-only", wheel_lib], check=True).stdout
    exported = {l.split()[-1] for l in dyn.splitlines() if l.strip()}
    assert exported and all(s.startswith("wb_") for s in exported), \
        sorted(s for s in exported if not s.startswith("wb_"))
    system = run(["nm", "-D", "--defined-only",
                  os.path.join(BUILD, "libwbroker.so")], check=True).stdout
    assert exported == {l.split()[-1] for l in system.splitlines()
                        if l.strip()}, "the wheel's API differs"
    undefined = run(["nm", "-D", "--undefined-only", wheel_lib],
                    check=True).stdout
    assert not re.search(r"\b(msgpack|pcre2|json)_", undefined), undefined
    # No text relocations, and the tag covers every glibc version used.
    dynamic = run(["readelf", "-dW", wheel_lib], check=True).stdout
    assert "TEXTREL" not in dynamic
    used = [tuple(map(int, v)) for v in re.findall(
        r"Name: GLIBC_(\d+)\.(\d+)", run(["readelf", "-VW", wheel_lib],
                                         check=True).stdout)]
    tag = tuple(map(int, re.search(r"manylinux_(\d+)_(\d+)_",
                                   wheel).groups()))
    assert max(used) <= tag, (max(used), tag)


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory):
    """A new virtual environment without system site-packages, with the
    wheel installed by pip from the file alone (no index)."""
    if os.path.exists("/etc/debian_version") and not glob.glob(
            "/usr/lib/python3*/ensurepip"):
        pytest.skip("no ensurepip here (Debian: apt-get install python3-venv)")
    venv = tmp_path_factory.mktemp("venv") / "env"
    r = run([sys.executable, "-m", "venv", str(venv)], env=clean_env())
    if r.returncode != 0:
        pytest.skip("cannot make a virtual environment with pip: " + r.stderr)
    py = str(venv / "bin" / "python")
    cfg = open(venv / "pyvenv.cfg").read()
    assert "include-system-site-packages = false" in cfg
    r = run([py, "-m", "pip", "install", "--no-index", "--no-deps",
             "--disable-pip-version-check", wheel], env=clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_path('platlib'))"],
               env=clean_env(), check=True).stdout.strip()
    return py, site


NO_TORCH = """
import os, sys, wbroker
print("package", wbroker.__file__)
with wbroker.connect(sys.argv[1]) as c:
    print("status", c.status().version, len(c.models()))
try:
    import torch
    print("torch", torch.__version__)
except ImportError:
    print("torch none")
"""

ROUND_TRIP = """
import os, sys
import torch
import wbroker

torch.manual_seed(0)
def net():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))
src, dst = net(), net()
with wbroker.connect(sys.argv[1]) as c:
    v = c.publish(sys.argv[2], src, metadata={"from": "the wheel"})
    r = c.load_into(dst, sys.argv[2])
assert r.version == v and not r.missing_keys and not r.unexpected_keys, r
for k, t in src.state_dict().items():
    assert torch.equal(t, dst.state_dict()[k]), k
assert torch.equal(src(torch.ones(2, 8)), dst(torch.ones(2, 8)))
libs = sorted({l.split()[-1] for l in open("/proc/self/maps")
               if "libwbroker" in l})
print("package", wbroker.__file__)
print("library", " ".join(libs))
print("torch", torch.__version__)
print("version", v)
"""


def test_wheel_installs_into_a_fresh_venv(fresh_venv, daemon, tmp_path):
    py, site = fresh_venv
    own_lib = os.path.join(site, "wbroker", "libwbroker.so")
    assert os.path.isfile(own_lib)
    # No torch: the package still reaches the daemon (its library given by
    # path, see the next test for finding it alone), and torch is absent.
    r = run([py, "-c", NO_TORCH, daemon.socket], cwd=str(tmp_path),
            env=clean_env(WBROKER_LIB=own_lib))
    assert r.returncode == 0, r.stderr
    assert "package %s" % os.path.join(site, "wbroker", "__init__.py") \
        in r.stdout
    assert "torch none" in r.stdout, "the venv sees another site: " + r.stdout


def torch_site():
    """The directory the running interpreter's torch is installed in."""
    try:
        import torch
    except ImportError:
        pytest.skip("no torch for this interpreter")
    return os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))


@pytest.fixture(scope="module")
def venv_with_torch(fresh_venv):
    """fresh_venv, seeing this interpreter's torch through a .pth file
    (appended to sys.path after the venv's own site-packages, so that the
    wheel's wbroker is the one imported): no torch download."""
    py, site = fresh_venv
    with open(os.path.join(site, "zz_torch_of_the_tests.pth"), "w") as f:
        f.write(torch_site() + "\n")
    return py, site


def round_trip(py, site, daemon, tmp_path, model, **env):
    r = run([py, "-c", ROUND_TRIP, daemon.socket, model], cwd=str(tmp_path),
            env=clean_env(**env))
    return r


def check_round_trip(r, site):
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines())
    assert lines["package"] == os.path.join(site, "wbroker", "__init__.py")
    assert lines["library"] == os.path.join(site, "wbroker", "libwbroker.so")


def test_wheel_round_trip_with_its_library(venv_with_torch, daemon, tmp_path):
    """publish + load_into from the venv, through the wheel's own .so."""
    py, site = venv_with_torch
    r = round_trip(py, site, daemon, tmp_path, "wheel-given",
                   WBROKER_LIB=os.path.join(site, "wbroker", "libwbroker.so"))
    check_round_trip(r, site)


def test_wheel_round_trip_finds_its_library(venv_with_torch, daemon,
                                            tmp_path):
    """The same with WBROKER_LIB unset: the package must load the
    libwbroker.so next to itself, as nothing else provides one here."""
    py, site = venv_with_torch
    r = round_trip(py, site, daemon, tmp_path, "wheel-alone")
    if r.returncode != 0 and "cannot load libwbroker" in r.stderr:
        pytest.xfail("wbroker/_lib.py does not look for libwbroker.so next "
                     "to itself yet (library_path() should try "
                     "os.path.join(os.path.dirname(__file__), 'libwbroker.so') "
                     "after $WBROKER_LIB)")
    check_round_trip(r, site)


# ------------------------------------------------------------------ install

def install(destdir, *args):
    make("install", "DESTDIR=%s" % destdir, *args)
    return str(destdir)


@pytest.fixture(scope="module")
def usr_tree(tmp_path_factory):
    """make install PREFIX=/usr into a DESTDIR (the packager's case)."""
    return install(tmp_path_factory.mktemp("destdir-usr"), "PREFIX=/usr")


def test_install_tree(usr_tree):
    d = lambda p: os.path.join(usr_tree, p.lstrip("/"))
    v = version()
    major = v.split(".")[0]
    for prog in ("wbrokerd", "wbroker"):
        assert os.access(d("/usr/bin/" + prog), os.X_OK), prog
    lib = d("/usr/lib/libwbroker.so.%s" % v)
    assert os.path.isfile(lib) and not os.path.islink(lib)
    assert soname(lib) == "libwbroker.so.%s" % major
    assert os.readlink(d("/usr/lib/libwbroker.so.%s" % major)) == \
        "libwbroker.so.%s" % v
    assert os.readlink(d("/usr/lib/libwbroker.so")) == \
        "libwbroker.so.%s" % major
    assert os.path.isfile(d("/usr/lib/libwbroker.a"))
    assert open(d("/usr/include/wbroker.h")).read() == open(HEADER).read()

    pc = open(d("/usr/lib/pkgconfig/wbroker.pc")).read()
    assert "prefix=/usr\n" in pc
    assert "Version: %s\n" % v in pc
    assert "/usr/local" not in pc

    src = os.path.join(ROOT, "client", "python")
    for f in glob.glob(os.path.join(src, "wbroker", "**", "*.py"),
                       recursive=True):
        rel = os.path.relpath(f, src)
        assert open(d("/usr/lib/python3/dist-packages/" + rel)).read() == \
            open(f).read(), rel

    units = d("/usr/lib/systemd/system")
    service = open(os.path.join(units, "wbrokerd.service")).read()
    socket_unit = open(os.path.join(units, "wbrokerd.socket")).read()
    assert re.search(r"^ExecStart=/usr/bin/wbrokerd( |$)", service, re.M)
    assert "User=wbroker" in service and "Group=wbroker" in service
    for text in (service, socket_unit):
        assert "/usr/local" not in text
        assert "file:///usr/share/doc/wbroker/README.md" in text
        assert "man:wbrokerd(8)" in text
    assert os.path.isfile(d("/usr/share/doc/wbroker/README.md"))
    # The host settings for 2 MiB pages are there to copy, not enabled.
    host = d("/usr/share/doc/wbroker/host")
    assert "vm.nr_hugepages" in open(
        os.path.join(host, "sysctl.d", "60-wbroker-hugepages.conf")).read()
    assert "shmem_enabled" in open(
        os.path.join(host, "tmpfiles.d", "wbroker-thp.conf")).read()
    for enabled in ("/usr/lib/sysctl.d", "/usr/lib/tmpfiles.d", "/etc"):
        assert not os.path.exists(d(enabled)), enabled

    sysusers = open(d("/usr/lib/sysusers.d/wbroker.conf")).read()
    assert re.search(r"^u\s+wbroker\s", sysusers, re.M)

    assert os.path.isfile(d("/usr/share/man/man8/wbrokerd.8"))
    assert os.path.isfile(d("/usr/share/man/man1/wbroker.1"))


def test_install_follows_the_prefix_given_at_install(tmp_path, usr_tree):
    """After a build (and an install) with other directories, the files
    that name directories follow the ones given now."""
    root = install(tmp_path, "PREFIX=/opt/wbt", "LIBDIR=/opt/wbt/lib64",
                   "BINDIR=/opt/wbt/sbin", "INCDIR=/opt/wbt/include/wb")
    d = lambda p: os.path.join(root, p.lstrip("/"))
    pc = open(d("/opt/wbt/lib64/pkgconfig/wbroker.pc")).read()
    assert "prefix=/opt/wbt\n" in pc
    assert "libdir=${prefix}/lib64\n" in pc
    assert "includedir=${prefix}/include/wb\n" in pc
    assert os.path.isfile(d("/opt/wbt/include/wb/wbroker.h"))
    assert os.path.isfile(d("/opt/wbt/lib64/libwbroker.so.%s" % version()))
    assert os.access(d("/opt/wbt/sbin/wbrokerd"), os.X_OK)
    service = open(d("/opt/wbt/lib/systemd/system/wbrokerd.service")).read()
    assert re.search(r"^ExecStart=/opt/wbt/sbin/wbrokerd( |$)", service, re.M)
    assert "file:///opt/wbt/share/doc/wbroker/README.md" in service
    assert glob.glob(d("/opt/wbt/lib/python3*/site-packages/wbroker/"
                       "__init__.py"))
    assert not os.path.exists(d("/usr"))


def test_installed_units_verify(usr_tree, tmp_path):
    """systemd-analyze accepts the installed units (ExecStart pointed at
    the built daemon, since /usr/bin/wbrokerd is not on this machine)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    units = os.path.join(usr_tree, "usr/lib/systemd/system")
    for name in ("wbrokerd.service", "wbrokerd.socket"):
        text = open(os.path.join(units, name)).read()
        text = text.replace("ExecStart=/usr/bin/wbrokerd",
                            "ExecStart=" + os.path.join(BUILD, "wbrokerd"))
        (tmp_path / name).write_text(text)
    r = run(["systemd-analyze", "verify", "--man=no",
             str(tmp_path / "wbrokerd.socket"),
             str(tmp_path / "wbrokerd.service")])
    assert r.returncode == 0, r.stdout + r.stderr


def test_installed_sysusers_creates_the_user(usr_tree, tmp_path):
    if not shutil.which("systemd-sysusers"):
        pytest.skip("no systemd-sysusers")
    (tmp_path / "etc").mkdir()
    conf = os.path.join(usr_tree, "usr/lib/sysusers.d/wbroker.conf")
    with open(conf) as f:
        r = run(["systemd-sysusers", "--root=%s" % tmp_path, "-"], stdin=f)
    assert r.returncode == 0, r.stderr
    passwd = open(tmp_path / "etc" / "passwd").read()
    group = open(tmp_path / "etc" / "group").read()
    assert re.search(r"^wbroker:x:\d+:\d+:", passwd, re.M), passwd
    assert re.search(r"^wbroker:x:\d+:", group, re.M), group


def help_options(prog):
    out = run([os.path.join(BUILD, prog), "--help"], check=True).stdout
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))


def test_installed_man_pages(usr_tree):
    """The pages render without warnings and name every option and
    command that --help lists."""
    for prog, page in (("wbrokerd", "usr/share/man/man8/wbrokerd.8"),
                       ("wbroker", "usr/share/man/man1/wbroker.1")):
        path = os.path.join(usr_tree, page)
        if shutil.which("groff"):
            r = run(["groff", "-man", "-Tutf8", "-ww", "-z", path],
                    env=dict(os.environ, LC_ALL="C.UTF-8"))
            assert r.returncode == 0 and not r.stderr, r.stderr
        text = open(path).read().replace("\\-", "-")
        missing = [o for o in help_options(prog) if o not in text]
        assert not missing, "%s lacks %s" % (page, missing)
    cli_help = run([os.path.join(BUILD, "wbroker"), "--help"],
                   check=True).stdout
    commands = re.findall(r"^  ([a-z]+)\b", cli_help.split("options:")[0],
                          re.M)
    text = open(os.path.join(usr_tree, "usr/share/man/man1/wbroker.1")).read()
    assert commands
    for cmd in commands:
        assert re.search(r"^\.BI? %s\b" % cmd, text, re.M), cmd


STATUS_C = r"""
#include <stdio.h>
#include <wbroker.h>

int main(int argc, char **argv) {
    wb_client *c = NULL;
    int rc = wb_connect(argc > 1 ? argv[1] : NULL, &c);
    if (rc < 0) {
        fprintf(stderr, "connect: %s\n", wb_errmsg(c));
        wb_close(c);
        return 1;
    }
    wb_status st;
    rc = wb_get_status(c, &st);
    if (rc < 0) {
        fprintf(stderr, "status: %s\n", wb_errmsg(c));
        wb_close(c);
        return 1;
    }
    printf("daemon %s pid %u\n", st.version, (unsigned)st.pid);
    printf("library %s\n", wb_version_string());
    wb_close(c);
    return 0;
}
"""


def pkg_config(tree, *args):
    env = clean_env(PKG_CONFIG_SYSROOT_DIR=tree,
                    PKG_CONFIG_PATH=os.path.join(tree, "usr/lib/pkgconfig"))
    r = run(["pkg-config"] + list(args) + ["wbroker"], env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_c_program_against_installed_pc(usr_tree, daemon, tmp_path):
    if not shutil.which("pkg-config") or not shutil.which("cc"):
        pytest.skip("no pkg-config or cc")
    src = tmp_path / "status.c"
    src.write_text(STATUS_C)
    cflags = pkg_config(usr_tree, "--cflags")
    libs = pkg_config(usr_tree, "--libs")
    assert "-I%s/usr/include" % usr_tree in cflags
    assert "-L%s/usr/lib" % usr_tree in libs and "-lwbroker" in libs
    assert pkg_config(usr_tree, "--modversion") == [version()]
    libdir = os.path.join(usr_tree, "usr/lib")

    # Linked against the shared library, run with it on LD_LIBRARY_PATH.
    prog = str(tmp_path / "status")
    r = run(["cc", "-Wall", "-Werror", "-o", prog, str(src)] + cflags + libs)
    assert r.returncode == 0, r.stderr
    env = clean_env(LD_LIBRARY_PATH=libdir)
    ldd = run(["ldd", prog], env=env, check=True).stdout
    assert os.path.join(libdir, "libwbroker.so.%s" % version()[0]) in ldd, ldd
    r = run([prog, daemon.socket], env=env)
    assert r.returncode == 0, r.stderr
    assert "daemon %s pid %d" % (version(), daemon.pid) in r.stdout

    # Linked statically: Requires.private must name everything it needs.
    static = [("-Wl,-Bstatic -lwbroker -Wl,-Bdynamic" if f == "-lwbroker"
               else f) for f in pkg_config(usr_tree, "--static", "--libs")]
    prog_static = str(tmp_path / "status-static")
    r = run(["cc", "-o", prog_static, str(src)] + cflags +
            " ".join(static).split())
    assert r.returncode == 0, r.stderr
    assert not any("libwbroker" in n for n in needed(prog_static))
    r = run([prog_static, daemon.socket], env=clean_env())
    assert r.returncode == 0, r.stderr
    assert "daemon %s" % version() in r.stdout


def test_installed_python_package(usr_tree, daemon, tmp_path):
    """The installed package finds the installed library by its soname
    (here through LD_LIBRARY_PATH, as ldconfig would on the live system)."""
    site = os.path.join(usr_tree, "usr/lib/python3/dist-packages")
    libdir = os.path.join(usr_tree, "usr/lib")
    code = textwrap.dedent("""
        import sys, wbroker
        with wbroker.connect(sys.argv[1]) as c:
            print("status", c.status().pid)
        print("package", wbroker.__file__)
        print("library", " ".join(sorted({l.split()[-1] for l in
              open("/proc/self/maps") if "libwbroker" in l})))
    """)
    r = run([sys.executable, "-c", code, daemon.socket], cwd=str(tmp_path),
            env=clean_env(PYTHONPATH=site, LD_LIBRARY_PATH=libdir))
    assert r.returncode == 0, r.stderr
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines())
    assert lines["status"] == str(daemon.pid)
    assert lines["package"] == os.path.join(site, "wbroker", "__init__.py")
    assert lines["library"] == os.path.join(libdir,
                                            "libwbroker.so.%s" % version())
