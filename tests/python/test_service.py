"""The installed service under a real systemd: a Debian 12 container with
its own systemd as PID 1 (tests/python/wbt_container.py), the project
installed inside with `make install`, driven with systemctl and used by
clients inside the container: the installed `wbroker` CLI, the installed
Python package on the container's python3 (no torch there), and a small C
client (tests/service/holder.c) built against the installed library.

Covered: socket activation (the first connection starts wbrokerd),
Type=notify readiness, the hardening list in practice (user wbroker, no
capabilities, seccomp, memfds, the page mode a plain daemon gets),
`systemctl restart` and `systemctl kill -s KILL` with Restart=on-failure
keeping every version with a client holding a mapping across both, and
the upgrade from the previous release (commit 9b33dde, built from git).

Skipped, saying why, where the machine cannot boot the container (not
root, no systemd-nspawn, no writable cgroup hierarchy, no network for a
cold image); WB_SERVICE_REQUIRED=1 makes that a failure instead.  What
each boot printed and the daemon's journal land in $WB_BUILD/service/.
"""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

import wbt_container as wc
from wbt_daemon import BUILD, ROOT

HOLDER_SRC = os.path.join(ROOT, "tests", "service", "holder.c")
OUT = os.path.join(BUILD, "service")
# The previous release: main as it landed before the restart issue.
OLD_RELEASE = "9b33dde"


def skip(why):
    if os.environ.get("WB_SERVICE_REQUIRED"):
        pytest.fail("service tests required, but: " + why)
    pytest.skip(why)


def make(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR")}
    r = subprocess.run(["make", "-C", cwd, "--no-print-directory"] + list(args),
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, "make %s failed:\n%s\n%s" % (
        " ".join(args), r.stdout[-4000:], r.stderr[-4000:])
    return r.stdout


def install(destdir, prefix="/usr/local", src=ROOT, build=None):
    """`make install` of the tree src into destdir, and the holder client
    built against what it installed (PREFIX/bin/wbt-holder)."""
    make("BUILD=" + (build or os.environ.get("WB_BUILD", "build")), "install",
         "DESTDIR=" + destdir, "PREFIX=" + prefix, cwd=src)
    env = dict(os.environ, PKG_CONFIG_PATH=destdir + prefix + "/lib/pkgconfig")
    flags = subprocess.run(["pkg-config", "--define-variable=prefix=" + destdir + prefix,
                            "--cflags", "--libs", "wbroker"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["cc", "-std=c11", "-O1", "-Wall", "-Werror", "-o",
                    destdir + prefix + "/bin/wbt-holder", HOLDER_SRC] + flags,
                   check=True)


def boot(name, prepare):
    """A booted container named name whose upper directory prepare(upper)
    filled first; skips when the machine cannot."""
    if sys.prefix != sys.base_prefix:
        pytest.skip("run once, by the system's python3: nothing here uses the "
                    "host's torch")
    why = wc.unusable()
    if why:
        skip(why)
    try:
        root, took = wc.image(log=open(os.devnull, "w"))
    except (RuntimeError, subprocess.CalledProcessError) as e:
        skip("no container image: %s" % e)
    if took:
        print("container image made in %.0f s" % took)
    c = wc.Container(root, os.path.join(OUT, name), "wbt-%s-%d" % (name, os.getpid()))
    prepare(c.upper)
    try:
        c.start()
    except wc.BootError as e:
        c.stop()
        skip("the container did not boot: %s" % e)
    try:
        c.run("ldconfig")
    except BaseException:
        c.stop()
        raise
    return c


def shutdown(c):
    """Keeps the container's journal in its directory, then stops it."""
    try:
        with open(os.path.join(c.dir, "journal.txt"), "w") as f:
            f.write(c.run("journalctl", "--no-pager", "-o", "short-monotonic",
                          check=False).stdout)
    finally:
        c.stop()


@pytest.fixture(scope="module")
def box():
    c = boot("new", install)
    yield c
    shutdown(c)


def serving(c):
    """c with wbrokerd.socket enabled and listening (what
    test_socket_activation checks step by step), for tests run alone."""
    systemctl(c, "enable", "--now", "wbrokerd.socket")
    return c


def systemctl(c, *args, check=True):
    return c.run("systemctl", *args, check=check).stdout.strip()


def prop(c, unit, name):
    return systemctl(c, "show", "-P", name, unit)


def wait_for(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def cli(c, *args, prefix="/usr/local", check=True, env=None):
    r = c.run(prefix + "/bin/wbroker", *args, check=check, env=env)
    return r


def cli_json(c, *args, prefix="/usr/local"):
    return json.loads(cli(c, "--json", *args, prefix=prefix).stdout)


def st_file(seed, nbytes):
    """A safetensors image of one U8 tensor of nbytes seeded bytes."""
    data = hashlib.shake_256(b"wbt-%d" % seed).digest(nbytes)
    h = json.dumps({"w": {"dtype": "U8", "shape": [nbytes],
                          "data_offsets": [0, nbytes]}}).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def publish(c, model, seed, nbytes=3 << 20, meta=(), prefix="/usr/local"):
    """Imports a generated file as model's next version; its number."""
    path = "/tmp/wbt-%s-%d.safetensors" % (model, seed)
    with open(c.root + path, "wb") as f:
        f.write(st_file(seed, nbytes))
    args = []
    for kv in meta:
        args += ["--meta", kv]
    out = cli_json(c, "import", *args, path, model, prefix=prefix)
    return out["version"]


def tensors_of(image):
    """name -> bytes of each tensor of a safetensors image."""
    (n,) = struct.unpack("<Q", image[:8])
    header = json.loads(image[8:8 + n])
    header.pop("__metadata__", None)
    return {k: image[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in header.items()}


def export_sha(c, ref, prefix="/usr/local"):
    """sha256 of the tensor bytes `wbroker export` writes for ref."""
    r = c.run(prefix + "/bin/wbroker", "export", ref, "-", text=False)
    return hashlib.sha256(b"".join(tensors_of(r.stdout).values())).hexdigest()


def data_sha(seed, nbytes):
    return hashlib.sha256(b"".join(tensors_of(st_file(seed, nbytes)).values())).hexdigest()


def main_pid(c):
    return int(prop(c, "wbrokerd.service", "MainPID"))


def proc_status(c, pid):
    text = open("%s/proc/%d/status" % (c.root, pid)).read()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


# ------------------------------------------------------- activation, readiness

def test_socket_activation(box):
    systemctl(box, "enable", "--now", "wbrokerd.socket")
    assert systemctl(box, "is-active", "wbrokerd.socket") == "active"
    # Nothing has connected yet: the socket exists, the daemon does not.
    assert systemctl(box, "is-active", "wbrokerd.service", check=False) == "inactive"
    st = os.stat(box.root + "/run/wbroker/wbroker.sock")
    assert oct(st.st_mode & 0o777) == "0o660"
    status = cli_json(box, "status")
    assert systemctl(box, "is-active", "wbrokerd.service") == "active"
    assert status["pid"] == main_pid(box)
    assert status["socket"] == "/run/wbroker/wbroker.sock"


def test_notify_readiness(box):
    """systemd calls the daemon started only once it says READY=1: with a
    2 s pause before the daemon's exec (same main pid, as NotifyAccess=main
    wants), the unit stays "activating" for the pause and a client that
    connects meanwhile waits in the socket's queue, then gets its answer."""
    serving(box)
    assert prop(box, "wbrokerd.service", "Type") == "notify"
    systemctl(box, "stop", "wbrokerd.service")
    dropin = box.root + "/run/systemd/system/wbrokerd.service.d"
    os.makedirs(dropin, exist_ok=True)
    with open(dropin + "/wbt-delay.conf", "w") as f:
        f.write("[Service]\nExecStart=\nExecStart=/bin/sh -c 'sleep 2; exec %s'\n"
                % unit_exec_start(box))
    try:
        systemctl(box, "daemon-reload")
        t0 = time.monotonic()
        client = box.popen("wbroker", "--json", "status", stdout=subprocess.PIPE)
        wait_for("activating", lambda: systemctl(
            box, "is-active", "wbrokerd.service", check=False) == "activating", 5)
        seen = []
        while True:
            s = systemctl(box, "is-active", "wbrokerd.service", check=False)
            if s != "activating":
                break
            seen.append(time.monotonic() - t0)
            time.sleep(0.1)
        assert s == "active"
        assert seen and seen[-1] > 1.5, "active before the daemon could be ready"
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0
        assert json.loads(out)["pid"] == main_pid(box)
        assert prop(box, "wbrokerd.service", "StatusText").startswith("serving")
    finally:
        os.unlink(dropin + "/wbt-delay.conf")
        systemctl(box, "daemon-reload")
        systemctl(box, "restart", "wbrokerd.service")


# ------------------------------------------------------------------ hardening

def test_hardening_in_practice(box, tmp_path):
    """The unit's sandbox leaves the daemon what it needs: it runs as user
    wbroker without capabilities, under seccomp and no_new_privs, creates
    sealed memfds (a publish and a map work) and gets the same page mode
    as a plain daemon on the same kernel.  systemd-analyze's verdict is
    kept in $WB_BUILD/service/security.txt."""
    serving(box)
    cli(box, "status")
    pid = main_pid(box)
    st = proc_status(box, pid)
    passwd = open(box.root + "/etc/passwd").read()
    uid = [l.split(":")[2] for l in passwd.splitlines() if l.startswith("wbroker:")][0]
    assert st["Uid"].split() == [uid] * 4
    group = open(box.root + "/etc/group").read()
    gid = [l.split(":")[2] for l in group.splitlines() if l.startswith("wbroker:")][0]
    assert st["Gid"].split() == [gid] * 4
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Seccomp"].strip() == "2"

    v = publish(box, "hardening", 1, nbytes=5 << 20)
    info = cli_json(box, "info", "hardening@%d" % v)
    assert export_sha(box, "hardening@%d" % v) == data_sha(1, 5 << 20)
    r = box.run("wbt-holder", "hardening", str(v), input="quit\n")
    assert r.stdout.startswith("held %d " % v), r.stdout

    # The same publish to a daemon outside any sandbox, on the host.
    from wbt_daemon import Daemon
    d = Daemon(tmp_path)
    try:
        path = str(tmp_path / "h.safetensors")
        with open(path, "wb") as f:
            f.write(st_file(1, 5 << 20))
        subprocess.run([d.cli, "--socket", d.socket, "import", path, "h"],
                       check=True, capture_output=True)
        plain = json.loads(subprocess.run(
            [d.cli, "--socket", d.socket, "--json", "info", "h"],
            check=True, capture_output=True, text=True).stdout)
    finally:
        d.stop()
    assert info["pages"] == plain["pages"], (info["pages"], plain["pages"])

    sec = box.run("systemd-analyze", "security", "--no-pager", "wbrokerd.service",
                  check=False).stdout
    with open(os.path.join(OUT, "security.txt"), "w") as f:
        f.write(sec)
    verdict = [l for l in sec.splitlines() if "Overall exposure level" in l]
    assert verdict, sec[-2000:]
    print(verdict[0].strip())
    score = float(verdict[0].split(":")[1].split()[0])
    assert score <= 2.0, verdict[0]


def test_socket_group(box):
    """The socket the unit makes (0660, group wbroker): a member of group
    wbroker connects, another user is refused by the file system, and the
    client says so naming the socket."""
    serving(box)
    box.run("useradd", "--no-create-home", "--groups", "wbroker", "wbt-member")
    box.run("useradd", "--no-create-home", "wbt-outsider")
    r = box.run("wbroker", "status", user="wbt-member",
                env={"WBROKER_SOCKET": "/run/wbroker/wbroker.sock"})
    assert "wbrokerd" in r.stdout
    r = box.run("wbroker", "status", user="wbt-outsider", check=False,
                env={"WBROKER_SOCKET": "/run/wbroker/wbroker.sock"})
    assert r.returncode == 1, r
    assert "/run/wbroker/wbroker.sock" in r.stderr and "ermission" in r.stderr, r.stderr


def test_python_binding_inside(box):
    """The installed Python package on the container's python3 (no torch)."""
    serving(box)
    code = ("import wbroker, sys\n"
            "c = wbroker.Client()\n"
            "v = c.publish_file(sys.argv[1], 'py-inside')\n"
            "print(v, c.status().pid, [m.name for m in c.models()])\n")
    with open(box.root + "/tmp/py.safetensors", "wb") as f:
        f.write(st_file(7, 4096))
    r = box.run("python3", "-c", code, "/tmp/py.safetensors")
    ver, pid, names = r.stdout.split(" ", 2)
    assert int(pid) == main_pid(box)
    assert "py-inside" in names


# --------------------------------------------------- restart with the store

def needs_store(c):
    """The restart tests need the daemon's descriptor store, which the unit
    enables with FileDescriptorStoreMax=."""
    serving(c)
    if int(prop(c, "wbrokerd.service", "FileDescriptorStoreMax") or 0) == 0:
        pytest.skip("this build's wbrokerd.service sets no FileDescriptorStoreMax= "
                    "(no descriptor store to restart from)")


def snapshot(c):
    """Everything a restart must keep: the model list (latest numbers,
    version and pin counts, owners, digests) and, for every number up to
    each latest, the version's info and the sha256 of its tensor bytes, or
    that it is gone."""
    models = sorted(cli_json(c, "ls"), key=lambda m: m["name"])  # order is not kept
    snap = {"ls": models}
    for m in models:
        for num in range(1, m["latest"] + 1):
            ref = "%s@%d" % (m["name"], num)
            r = cli(c, "--json", "info", ref, check=False)
            if r.returncode != 0:
                assert json.loads(r.stdout)["error"] == "ENOVERSION", r.stdout
                snap[ref] = None
            else:
                snap[ref] = (json.loads(r.stdout), export_sha(c, ref))
    return snap


class Holder:
    """tests/service/holder.c inside the container, holding model@version."""

    def __init__(self, c, model, version, prefix="/usr/local", env=None):
        self.p = c.popen(prefix + "/bin/wbt-holder", model, str(version), env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = self.p.stdout.readline().split()
        assert self.first[:1] == ["held"], self.first
        self.sum = self.first[3]
        self.pid = int(self.first[4])

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().split()

    def quit(self):
        if self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        assert self.p.wait(10) == 0


def restart_and_check(c, how):
    """Publishes (two models, a pin, metadata), holds a version in a C
    client, restarts the service the way how() does, and checks that every
    version is back, the hold survived and is listed, the client's next
    call works and new commits continue the numbering."""
    listed = cli_json(c, "ls")
    held_model, held_version = listed[0]["name"], listed[0]["latest"]
    h = Holder(c, held_model, held_version)
    try:
        before = snapshot(c)
        pid_before = main_pid(c)
        how()
        wait_for("wbrokerd active again", lambda: systemctl(
            c, "is-active", "wbrokerd.service", check=False) == "active")
        assert main_pid(c) != pid_before
        assert snapshot(c) == before
        # Recovery is logged with its count (READY=1 follows it).
        log = c.run("journalctl", "--no-pager", "-o", "cat", "_PID=%d" % main_pid(c)).stdout
        counts = re.findall(r"recovered (\d+) versions", log)
        assert counts and int(counts[0]) == sum(v is not None for v in before.values()) - 1, log
        assert h.ask("sum") == ["sum", h.sum]
        holders = cli_json(c, "holders")
        mine = [x for x in holders if x["pid"] == h.pid and x["model"] == held_model
                and x["version"] == held_version]
        assert mine, holders
        assert h.ask("ls") == ["ls", str(len(before["ls"]))]
        assert h.ask("map %d" % held_version)[:4] == ["map", str(held_version),
                                                      h.first[2], h.sum]
        assert publish(c, held_model, 1000 + held_version) == held_version + 1
        # The pins came back too: retention (keep 2) still spares them.
        pinned = {m["name"]: m["pinned"] for m in cli_json(c, "ls")}
        assert pinned == {m["name"]: m["pinned"] for m in before["ls"]}
        # The hold taken back from the store still ends with the process.
        h.quit()
        wait_for("the hold to end", lambda: not [
            x for x in cli_json(c, "holders") if x["pid"] == h.pid], 10)
    finally:
        h.quit()


def test_restart_keeps_every_version(box):
    needs_store(box)
    # restart-a: 1 (pinned) 2 (retired by keep 2) 3 4; restart-b: 1.
    first = publish(box, "restart-a", 10, meta=("step=0",))
    cli(box, "pin", "restart-a@%d" % first)
    for i in range(1, 4):
        publish(box, "restart-a", 10 + i, meta=("step=%d" % i,))
    publish(box, "restart-b", 20, nbytes=9 << 20)
    restart_and_check(box, lambda: systemctl(box, "restart", "wbrokerd.service"))


def test_kill_restarts_with_every_version(box):
    needs_store(box)
    publish(box, "restart-a", 30)
    restarts = int(prop(box, "wbrokerd.service", "NRestarts"))
    restart_and_check(box, lambda: systemctl(box, "kill", "-s", "KILL",
                                             "wbrokerd.service"))
    assert int(prop(box, "wbrokerd.service", "NRestarts")) == restarts + 1


def unit_exec_start(c):
    """The installed unit's ExecStart= command line."""
    unit = open(c.root + "/usr/local/lib/systemd/system/wbrokerd.service").read()
    line = [l for l in unit.splitlines() if l.startswith("ExecStart=")][0]
    return line[len("ExecStart="):]


def test_reboot_keeps_persisted_versions(box):
    """--persist under the unit's sandbox (a StateDirectory=, the rest of
    the file system read-only) across a reboot of the whole container,
    which the descriptor store does not survive and the files do: every
    version comes back from disk, numbers, pins, digests and bytes."""
    serving(box)
    if "--persist" not in box.run("wbrokerd", "--help").stdout:
        pytest.skip("this wbrokerd has no --persist")
    dropin = "/etc/systemd/system/wbrokerd.service.d"
    os.makedirs(box.root + dropin, exist_ok=True)
    with open(box.root + dropin + "/wbt-persist.conf", "w") as f:
        f.write("[Service]\nStateDirectory=wbroker\nExecStart=\n"
                "ExecStart=%s --persist /var/lib/wbroker\n" % unit_exec_start(box))
    try:
        systemctl(box, "daemon-reload")
        systemctl(box, "restart", "wbrokerd.service")
        first = publish(box, "persisted", 40, meta=("kind=disk",))
        cli(box, "pin", "persisted@%d" % first)
        publish(box, "persisted", 41, nbytes=7 << 20)

        def written():
            counters = cli_json(box, "status")["counters"]
            return counters.get("persist.backlog", 1) == 0 and counters.get(
                "persist.written", 0) > 0
        wait_for("the persistence backlog to drain", written)
        before = snapshot(box)

        box.stop()
        box.start()
        box.run("ldconfig")
        assert systemctl(box, "is-active", "wbrokerd.socket") == "active"
        after = snapshot(box)
        assert after == before
        log = box.run("journalctl", "--no-pager", "-o", "cat", "-u",
                      "wbrokerd.service", "-b").stdout
        assert re.search(r"recovered \d+ versions .*from /var/lib/wbroker", log), log
    finally:
        os.unlink(box.root + dropin + "/wbt-persist.conf")  # a new root after the reboot
        systemctl(box, "daemon-reload")
        systemctl(box, "restart", "wbrokerd.service")


# -------------------------------------------------------------------- upgrade

def old_release():
    """Source tree of OLD_RELEASE, built once (daemon, CLI, libraries) and
    kept in $WB_CACHE/release-<commit>; skips when this clone lacks it."""
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", "-q",
                        OLD_RELEASE + "^{commit}"], capture_output=True, text=True)
    if r.returncode != 0:
        skip("commit %s (the previous release) is not in this clone" % OLD_RELEASE)
    commit = r.stdout.strip()
    top = os.path.join(wc.CACHE, "release-" + commit)
    src = os.path.join(top, "src")
    if not os.path.exists(os.path.join(top, ".complete")):
        shutil.rmtree(top, ignore_errors=True)
        os.makedirs(src)
        archive = subprocess.Popen(["git", "-C", ROOT, "archive", commit],
                                   stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", src], stdin=archive.stdout, check=True)
        assert archive.wait() == 0
        make("-j2", "BUILD=build", "build/wbrokerd", "build/wbroker",
             "build/libwbroker.a", "build/wbroker.pc", cwd=src)
        make("-j2", "BUILD=build", "install", "DESTDIR=" + os.path.join(top, "probe"),
             cwd=src)
        shutil.rmtree(os.path.join(top, "probe"))
        open(os.path.join(top, ".complete"), "w").write(commit + "\n")
    return src


OLD = "/opt/wbroker-old"
NEW = "/opt/wbroker-new"


@pytest.fixture(scope="module")
def upgrade_box():
    """A container whose service is the previous release (in /usr/local),
    with that release's clients in /opt/wbroker-old and this one's in
    /opt/wbroker-new."""
    src = old_release()

    def prepare(upper):
        install(upper, src=src, build="build")
        install(upper, prefix=OLD, src=src, build="build")
        install(upper, prefix=NEW)

    c = boot("upgrade", prepare)
    yield c
    shutdown(c)


def lib_env(prefix):
    return {"LD_LIBRARY_PATH": prefix + "/lib",
            "PYTHONPATH": prefix + "/lib/python3.11/site-packages"}


def client_round(c, prefix, model, seed, ls=True):
    """What a client of the release at prefix does against the running
    daemon: status, publish two versions, info, export, hold a mapping and
    read it again, and (with ls) list through the holder's handle and with
    the CLI.  Returns the daemon's status."""
    status = cli_json(c, "status", prefix=prefix)
    v1 = publish(c, model, seed, prefix=prefix)
    v2 = publish(c, model, seed + 1, prefix=prefix)
    assert v2 == v1 + 1
    info = cli_json(c, "info", "%s@%d" % (model, v1), prefix=prefix)
    assert info["bytes"] == 3 << 20
    assert export_sha(c, "%s@%d" % (model, v2), prefix=prefix) == data_sha(seed + 1, 3 << 20)
    h = Holder(c, model, v2, prefix=prefix, env=lib_env(prefix))
    try:
        assert h.ask("sum") == ["sum", h.sum]
        assert h.ask("map %d" % v1)[:2] == ["map", str(v1)]
        if ls:
            answer = h.ask("ls")
            assert answer[0] == "ls", " ".join(answer)
            names = [m["name"] for m in cli_json(c, "ls", prefix=prefix)]
            assert model in names
    finally:
        h.quit()
    return status


@pytest.fixture(scope="module")
def upgraded_box(upgrade_box):
    """upgrade_box after the upgrade: versions published to the previous
    release's daemon, then this release installed over it with `make
    install`, the units reloaded and the service restarted."""
    c = upgrade_box
    systemctl(c, "enable", "--now", "wbrokerd.socket")
    old = cli_json(c, "status", prefix=OLD)
    print("previous release: wbrokerd %s (commit %s)" % (old["version"], OLD_RELEASE))
    publish(c, "old-on-old", 100, prefix=OLD)
    c.old_pid = main_pid(c)
    install(c.root)
    c.run("ldconfig")
    systemctl(c, "daemon-reload")
    systemctl(c, "restart", "wbrokerd.service")
    return c


def test_upgrade_new_clients_on_old_daemon(upgrade_box):
    """This release's CLI, C library and Python package against the
    previous release's daemon."""
    c = upgrade_box
    systemctl(c, "enable", "--now", "wbrokerd.socket")
    client_round(c, NEW, "new-on-old", 200)
    code = ("import wbroker\n"
            "print(sorted(m.name for m in wbroker.Client().models()))\n")
    r = c.run("python3", "-c", code, env=lib_env(NEW))
    assert "new-on-old" in r.stdout


def test_upgrade_new_daemon_starts_on_old_state(upgraded_box):
    """The new daemon starts where the old one ran.  The old release kept
    nothing across a restart (it has no descriptor store and no
    --persist), so what was published to it is gone: that is checked and
    said, not hidden."""
    c = upgraded_box
    assert systemctl(c, "is-active", "wbrokerd.service") == "active"
    assert main_pid(c) != c.old_pid
    left = cli_json(c, "ls", prefix=NEW)
    print("models after the upgrade from %s: %s" % (OLD_RELEASE, [m["name"] for m in left]))
    assert left == [], "the previous release kept nothing, yet: %r" % left
    journal = c.run("journalctl", "-u", "wbrokerd.service", "--no-pager", "-o", "cat",
                    "_PID=%d" % main_pid(c)).stdout
    assert " error " not in journal and " warning " not in journal, journal
    client_round(c, NEW, "new-on-new", 300)


def test_upgrade_old_clients_on_new_daemon(upgraded_box):
    """The previous release's CLI and C library against this release's
    daemon: hello, publish, info, export, map and hold."""
    client_round(upgraded_box, OLD, "old-on-new", 400, ls=False)


def test_upgrade_old_list_on_new_daemon(upgraded_box):
    """The previous release's wb_list() (and `wbroker ls`) against this
    daemon: works, or fails saying which versions do not match."""
    c = upgraded_box
    publish(c, "old-ls", 500, prefix=OLD)
    r = cli(c, "ls", prefix=OLD, check=False)
    if r.returncode != 0:
        assert "version" in r.stderr.lower() or "protocol" in r.stderr.lower(), r.stderr
    assert "old-ls" in r.stdout
