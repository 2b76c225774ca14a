"""wbt_container.py -- A Debian 12 container with its own systemd as PID 1,
for the service tests (tests/python/test_service.py).

The root file system comes from `debootstrap --variant=minbase` with
systemd, dbus, python3 and the Debian packages that hold the shared
libraries of the built wbrokerd, wbroker and libwbroker.so (found with ldd
and dpkg -S, so that a new dependency makes a new image).  It is cached
outside the clone, in $WB_CACHE/container/bookworm-<hash of the package
list and of IMAGE_FORMAT> (default ~/.cache/wbroker), and never written
to again: each boot lays an overlay (upper directory in the build dir) on
it, into which the test installs the project with `make install
DESTDIR=...` before booting.

Booting: `systemd-nspawn --boot --register=no --keep-unit` inside a mount
namespace of its own (unshare -m), in a cgroup of its own made under each
writable hierarchy.  Neither machined nor a systemd on the host is needed,
and the host's mounts do not change: the overlay and a tmpfs over
/run/systemd/nspawn (nspawn refuses to clean up a /run that is not a
tmpfs) live in that namespace and go with it.  Commands run inside through
`nsenter --all` into the namespaces of the container's PID 1.

    python3 tests/python/wbt_container.py image   # build (or find) the image
    python3 tests/python/wbt_container.py shell   # boot one, print how to enter

unusable() says why a machine cannot do this (not root, no systemd-nspawn,
no writable cgroup2 hierarchy, ...), so that the tests skip saying so.
"""
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
CACHE = os.environ.get("WB_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "wbroker")
SUITE = "bookworm"
# What the image always has besides the libraries' packages: an init and
# a bus for systemctl, python3 (stdlib ctypes) for the Python binding.
BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3"]
# Bumped when the image is made differently with the same packages.
IMAGE_FORMAT = "1"
# Timers and a getty that a test container does not need: fewer units,
# a quicker boot, nothing that starts apt in the middle of a test.
MASKED = ["apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
          "e2scrub_all.timer", "fstrim.timer", "console-getty.service",
          "getty@.service", "systemd-tmpfiles-clean.timer"]
# Images kept in the cache, the ones used last (see _prune()).
KEEP_IMAGES = 3
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _which_all(names):
    return [n for n in names if shutil.which(n) is None]


def cgroup_dirs():
    """The writable cgroup hierarchies a container's cgroup goes under:
    the cgroup2 one (/sys/fs/cgroup itself or its unified/ of a hybrid
    layout) and the named systemd v1 one when there is one."""
    found = []
    for line in open("/proc/self/mountinfo"):
        parts = line.split()
        sep = parts.index("-")
        fstype, mnt, opts = parts[sep + 1], parts[4], parts[sep + 3]
        if not mnt.startswith("/sys/fs/cgroup"):
            continue
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts):
            if os.access(mnt, os.W_OK):
                found.append(mnt)
    return found


def unusable():
    """None when this machine can boot the container, else why not (one
    sentence naming what is missing)."""
    if os.geteuid() != 0:
        return "the service tests need root (debootstrap, mounts, systemd-nspawn)"
    missing = _which_all(["systemd-nspawn", "debootstrap", "unshare", "nsenter",
                          "dpkg", "ldd"])
    if missing:
        return ("missing %s (Debian: systemd-container, debootstrap, util-linux)"
                % ", ".join(missing))
    if " - cgroup2 " not in open("/proc/self/mountinfo").read():
        return "no cgroup2 hierarchy is mounted (systemd 252 in the container needs one)"
    if not cgroup_dirs():
        return "no writable cgroup hierarchy under /sys/fs/cgroup"
    if "overlay" not in open("/proc/filesystems").read():
        r = subprocess.run(["modprobe", "overlay"], capture_output=True)
        if r.returncode != 0 and "overlay" not in open("/proc/filesystems").read():
            return "the kernel has no overlay file system"
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return "cannot make a mount namespace: " + r.stderr.strip()
    return None


def mirror():
    """The Debian mirror this machine's apt uses ($WB_DEBIAN_MIRROR wins)."""
    if os.environ.get("WB_DEBIAN_MIRROR"):
        return os.environ["WB_DEBIAN_MIRROR"]
    texts = []
    for d in ("/etc/apt/sources.list.d",):
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith((".sources", ".list")):
                    texts.append(open(os.path.join(d, f)).read())
    if os.path.exists("/etc/apt/sources.list"):
        texts.append(open("/etc/apt/sources.list").read())
    for text in texts:
        for m in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if re.search(r"/debian/?$", uri):
                return uri
    return "http://deb.debian.org/debian"


def runtime_packages(binaries):
    """Debian packages that hold the shared libraries the binaries load
    (libc6 is in every image anyway)."""
    pkgs = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True,
                             check=True).stdout
        for path in re.findall(r"=>\s+(/\S+)", out):
            for p in (path, os.path.realpath(path)):
                r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
                if r.returncode == 0:
                    pkgs.add(r.stdout.split(":")[0].split(",")[0].strip())
                    break
            else:
                raise RuntimeError("no Debian package holds %s (needed by %s)"
                                   % (path, b))
    pkgs.discard("libc6")
    return sorted(pkgs)


def packages():
    bins = [os.path.join(BUILD, n) for n in ("wbrokerd", "wbroker", "libwbroker.so")]
    return sorted(set(BASE_PACKAGES) | set(runtime_packages(bins)))


def image(pkgs=None, log=sys.stderr):
    """Path of the cached root file system with pkgs (default packages()),
    made first when there is none; (path, seconds it took to make, 0 when
    cached)."""
    pkgs = sorted(pkgs or packages())
    key = hashlib.sha256(("%s\n%s\n%s" % (IMAGE_FORMAT, SUITE, " ".join(pkgs)))
                         .encode()).hexdigest()[:16]
    top = os.path.join(CACHE, "container")
    final = os.path.join(top, "%s-%s" % (SUITE, key))
    if os.path.exists(os.path.join(final, ".complete")):
        os.utime(os.path.join(final, ".complete"))  # last use, for _prune()
        return os.path.join(final, "root"), 0.0
    os.makedirs(top, exist_ok=True)
    with open(os.path.join(top, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap at a time
        if os.path.exists(os.path.join(final, ".complete")):
            return os.path.join(final, "root"), 0.0
        t0 = time.monotonic()
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        os.makedirs(tmp)
        root = os.path.join(tmp, "root")
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(pkgs),
               SUITE, root, mirror()]
        print("wbt_container: " + " ".join(cmd), file=log)
        with open(os.path.join(tmp, "debootstrap.log"), "w") as out:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = open(os.path.join(tmp, "debootstrap.log")).read()[-2000:]
            raise RuntimeError("debootstrap failed (%d):\n%s" % (r.returncode, tail))
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in os.listdir(os.path.join(root, d)):
                p = os.path.join(root, d, f)
                if os.path.isfile(p):
                    os.unlink(p)
        etc = os.path.join(root, "etc/systemd/system")
        for unit in MASKED:
            p = os.path.join(etc, unit)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink("/dev/null", p)
        with open(os.path.join(tmp, "packages.txt"), "w") as f:
            f.write("\n".join(pkgs) + "\n")
        took = time.monotonic() - t0
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write("debootstrap took %.1f s\n" % took)
        os.rename(tmp, final)
        _prune(top, keep=KEEP_IMAGES)
        return os.path.join(final, "root"), took


def _prune(top, keep):
    """Removes all but the keep images used last (each is ~200 MB; an old
    one is only worth keeping for a branch that still builds with it)."""
    done = []
    for d in os.listdir(top):
        marker = os.path.join(top, d, ".complete")
        if d.startswith(SUITE + "-") and os.path.exists(marker):
            done.append((os.path.getmtime(marker), d))
    for _, d in sorted(done, reverse=True)[keep:]:
        shutil.rmtree(os.path.join(top, d), ignore_errors=True)


class BootError(RuntimeError):
    """The container did not boot; the message says why."""


class Container:
    """One booted container on an overlay of an image.

    Files for the container go into .upper (the overlay's upper directory)
    before start(), or under .root (/proc/PID/root of its PID 1) after."""

    def __init__(self, image_root, workdir, name):
        self.image_root = image_root
        self.name = name
        self.dir = workdir
        shutil.rmtree(workdir, ignore_errors=True)
        self.upper = os.path.join(workdir, "upper")
        self.work = os.path.join(workdir, "work")
        self.merged = os.path.join(workdir, "merged")
        for d in (self.upper, self.work, self.merged):
            os.makedirs(d)
        self.log = os.path.join(workdir, "console.log")
        self.proc = None
        self.leader = None
        self.children = []  # popen()ed, ended by stop() if still running
        self.cgroups = [os.path.join(h, name) for h in cgroup_dirs()]

    @property
    def root(self):
        return "/proc/%d/root" % self.leader

    def start(self, timeout=60):
        """Boots the container (again, after stop(): a reboot that keeps
        what the upper directory holds)."""
        self.leader = None
        for cg in self.cgroups:
            os.makedirs(cg, exist_ok=True)
        # The shell joins the cgroups and mounts in its own namespace, then
        # becomes systemd-nspawn (same pid): nothing outlives its namespace.
        script = r"""
set -e
for cg in $CGROUPS; do echo $$ > "$cg/cgroup.procs"; done
mkdir -p /run/systemd/nspawn
mount -t tmpfs tmpfs /run/systemd/nspawn
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$MERGED"
exec systemd-nspawn --boot --quiet --register=no --keep-unit \
    --console=read-only --machine="$NAME" --directory="$MERGED"
"""
        env = dict(os.environ, CGROUPS=" ".join(self.cgroups), LOWER=self.image_root,
                   UPPER=self.upper, WORK=self.work, MERGED=self.merged,
                   NAME=self.name)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.leader is None:
            if self.proc.poll() is not None:
                raise BootError("systemd-nspawn exited with %d: %s" % (
                    self.proc.returncode, self.console()[-2000:].strip()))
            if time.monotonic() > deadline:
                raise BootError("no PID 1 in the container after %d s" % timeout)
            try:
                kids = open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)).read().split()
            except OSError:
                kids = []
            for k in kids:
                try:
                    if open("/proc/%s/comm" % k).read().strip() == "systemd":
                        self.leader = int(k)
                except OSError:
                    pass
            time.sleep(0.05)
        # Until PID 1 has its bus socket, systemctl cannot even ask.
        while True:
            left = deadline - time.monotonic()
            r = self.run("systemctl", "is-system-running", "--wait", check=False,
                         timeout=max(left, 1))
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            if self.proc.poll() is not None or left <= 0:
                raise BootError("the container's systemd did not come up (%s): %s" % (
                    state or r.stderr.strip(), self.console()[-2000:].strip()))
            time.sleep(0.2)
        self.state = state
        return self

    def console(self):
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def argv(self, *cmd, user=None, env=None):
        """nsenter argv that runs cmd inside, with a clean environment."""
        e = ["PATH=" + PATH, "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
             "HOME=/root"]
        e += ["%s=%s" % kv for kv in (env or {}).items()]
        pre = []
        if user is not None:
            pre = ["setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups"]
        return (["nsenter", "--target", str(self.leader), "--all", "--", "env", "-i"]
                + e + pre + list(cmd))

    def run(self, *cmd, check=True, input=None, timeout=60, user=None, env=None,
            text=True):
        r = subprocess.run(self.argv(*cmd, user=user, env=env), input=input,
                           capture_output=True, text=text, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("in %s: %s exited with %d:\n%s%s" % (
                self.name, " ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r

    def popen(self, *cmd, user=None, env=None, **kw):
        p = subprocess.Popen(self.argv(*cmd, user=user, env=env), **kw)
        self.children.append(p)
        return p

    def stop(self, timeout=30):
        """Powers the container off (nspawn turns SIGTERM into an orderly
        shutdown), then removes its cgroups; returns the console output."""
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        # The kernel lets go of a cgroup once its last process is reaped,
        # which can lag behind nspawn's exit: retry for a while.
        deadline = time.monotonic() + 5
        while True:
            for cg in self.cgroups:
                for top, dirs, _ in os.walk(cg, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(top)
            left = [cg for cg in self.cgroups if os.path.exists(cg)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return self.console()


def main(argv):
    why = unusable()
    if why:
        print("cannot boot the container here: " + why, file=sys.stderr)
        return 1
    root, took = image()
    print(root + ("  (made in %.0f s)" % took if took else "  (cached)"))
    if argv[1:] == ["shell"]:
        c = Container(root, os.path.join(BUILD, "service", "shell"), "wbt-shell")
        c.start()
        print("booted; enter with: nsenter -t %d -a; stop with: kill %d"
              % (c.leader, c.proc.pid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
