"""2 MiB pages (wbrokerd --huge-pages): on each backend the host offers,
a published version maps back bit-exact, the bytes status reports in 2 MiB
pages are what the kernel holds, an exhausted hugetlb pool is a clean
error after which the daemon keeps serving, and a consumer writing to its
copy-on-write views never gets a SIGBUS.

The host settings these need (/proc/sys/vm/nr_hugepages and shmem's
transparent huge page policy) are set only as root, kept small (the pool
at most 256 MiB here), and restored whatever happens; without root, or on
a kernel without the control, the test is skipped saying why.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import wbroker

THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
THP_2M = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled"
NR = "/proc/sys/vm/nr_hugepages"
MIB = 1 << 20
POOL_PAGES = 128  # 256 MiB


def _choice(path):
    text = open(path).read()
    return text[text.index("[") + 1:text.index("]")]


@pytest.fixture
def host():
    """Sets host page settings for one test and restores them after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to set %s and %s" % (NR, THP))
    saved = {}
    for path in (NR, THP, THP_2M):
        if os.path.exists(path):
            saved[path] = (open(path).read().strip() if path == NR
                           else _choice(path))

    def write(path, value):
        if path not in saved:
            pytest.skip("this kernel has no %s" % path)
        with open(path, "w") as f:
            f.write(str(value))

    def pool(pages):
        write(NR, pages)
        got = int(open(NR).read())
        if got < pages:
            pytest.skip("the kernel gave %d of %d huge pages" % (got, pages))

    def thp(policy):
        write(THP, policy)
        if THP_2M in saved:
            write(THP_2M, "inherit")

    write.pool, write.thp = pool, thp
    try:
        yield write
    finally:
        # The 2 MiB control first: it may name "inherit" of the global one.
        for path in (THP, THP_2M, NR):
            if path in saved:
                with open(path, "w") as f:
                    f.write(saved[path])


def _meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _counters(d):
    out = subprocess.run([d.cli, "--socket", d.socket, "--json", "status"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["counters"]


def _info(d, name):
    out = subprocess.run([d.cli, "--socket", d.socket, "--json", "info", name],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _status_text(d):
    return subprocess.run([d.cli, "--socket", d.socket, "status"], check=True,
                          capture_output=True, text=True).stdout


def _tensors(mib, seed):
    g = torch.Generator().manual_seed(seed)
    n = mib * MIB // 4 // 3
    return {"a": torch.randn(n, generator=g), "b": torch.randn(n, generator=g),
            "c": torch.randint(0, 1 << 30, (n,), generator=g,
                               dtype=torch.int32)}


def _publish_check(d, name, mib=24, seed=1):
    sd = _tensors(mib, seed)
    with wbroker.connect(d.socket) as c:
        c.publish(name, sd)
        got = c.state_dict(name)
        for k, t in sd.items():
            assert torch.equal(got[k], t), k
        # A consumer writing to its copy-on-write views: private, no fault.
        for t in got.values():
            t.fill_(7)
        again = c.state_dict(name)
        for k, t in sd.items():
            assert torch.equal(again[k], t), k
    return sd


@pytest.mark.parametrize("policy", ["within_size", "always", "advise"])
def test_thp_each_policy_backs_segments_with_2m_pages(host, make_daemon,
                                                      policy):
    host.thp(policy)
    d = make_daemon("--huge-pages", "thp")
    before = _meminfo("ShmemHugePages")
    _publish_check(d, "m")
    c = _counters(d)
    # The kernel's own count of huge shmem pages grew as much (a second
    # source than the daemon's smaps reading).
    assert _meminfo("ShmemHugePages") - before >= 24 * MIB
    assert c["pages.thp"] == 1
    # 24 MiB of data (plus the header's unit) lies in 2 MiB folios, as the
    # kernel's smaps counts them.
    assert c["bytes.2m"] >= 24 * MIB, c
    assert c["bytes.2m"] % (2 * MIB) == 0
    i = _info(d, "m")
    assert i["pages"] == "thp" and i["bytes_2m"] == c["bytes.2m"]
    assert "--huge-pages thp" in _status_text(d)


def test_off_reports_4k_only(host, make_daemon):
    host.thp("within_size")
    d = make_daemon("--huge-pages", "off")
    _publish_check(d, "m")
    c = _counters(d)
    assert c["pages.off"] == 1 and c["bytes.2m"] == 0
    assert c["bytes.4k"] >= 24 * MIB
    i = _info(d, "m")
    assert i["pages"] == "4k" and i["bytes_2m"] == 0


def test_thp_refuses_to_start_without_shmem_thp(host, tmp_path):
    host.thp("never")
    from wbt_daemon import Daemon
    with pytest.raises(RuntimeError, match="transparent huge pages"):
        Daemon(tmp_path, ("--huge-pages", "thp"))


def test_hugetlb_refuses_to_start_without_a_pool(host, tmp_path):
    host.pool(0)
    from wbt_daemon import Daemon
    with pytest.raises(RuntimeError, match="hugetlb pool is empty"):
        Daemon(tmp_path, ("--huge-pages", "hugetlb"))


def test_hugetlb_publish_map_and_exhaustion(host, make_daemon):
    host.pool(POOL_PAGES)
    host.thp("never")
    d = make_daemon("--huge-pages", "hugetlb")
    _publish_check(d, "m", mib=100, seed=2)
    c = _counters(d)
    assert c["pages.hugetlb"] == 1
    assert c["bytes.2m"] >= 100 * MIB and c["bytes.4k"] == 0, c
    i = _info(d, "m")
    assert i["pages"] == "hugetlb" and i["bytes_2m"] == c["bytes.2m"]
    # The pool has 256 MiB; a second 200 MiB version does not fit: a clean
    # ENOSPC, and the daemon goes on serving the first.
    with wbroker.connect(d.socket) as cl:
        with pytest.raises(wbroker.Error) as ei:
            cl.publish("big", _tensors(200, 3))
        assert "hugetlb pool" in str(ei.value)
        assert cl.state_dict("m")["a"].numel() > 0
    assert d.proc.poll() is None


def test_hugetlb_writing_consumer_with_pool_exhausted(host, make_daemon):
    """With the pool full, a copy-on-write view cannot reserve its pages:
    it becomes a private copy, and writes to it never SIGBUS."""
    host.pool(64)  # 128 MiB
    host.thp("never")
    d = make_daemon("--huge-pages", "hugetlb")
    sd = _tensors(100, 4)
    with wbroker.connect(d.socket) as c:
        c.publish("m", sd)
    free = int([l for l in open("/proc/meminfo")
                if l.startswith("HugePages_Free")][0].split()[1])
    assert free * 2 * MIB < 100 * MIB
    # In a child process, so that a SIGBUS would show as its exit status.
    code = (
        "import torch, wbroker, sys\n"
        "c = wbroker.connect(sys.argv[1])\n"
        "sd = c.state_dict('m')\n"
        "for t in sd.values(): t.add_(1)\n"
        "print(sum(int(t.numel()) for t in sd.values()))\n")
    env = d.env()
    env["WBROKER_LIB"] = os.environ["WBROKER_LIB"]
    r = subprocess.run([sys.executable, "-c", code, d.socket], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == sum(t.numel() for t in sd.values())


def test_auto_prefers_hugetlb_then_thp(host, make_daemon):
    host.pool(32)  # 64 MiB: room for the first version only
    host.thp("within_size")
    d = make_daemon()
    _publish_check(d, "small", mib=40, seed=5)
    with open(NR) as f:
        assert int(f.read()) == 32
    c1 = _counters(d)
    assert c1["pages.auto"] == 1 and c1["bytes.2m"] >= 40 * MIB
    _publish_check(d, "next", mib=40, seed=6)  # pool short: THP
    c2 = _counters(d)
    assert c2["bytes.2m"] >= 80 * MIB, c2
    log = open(d.log).read()
    assert "hugetlb pages" in log and "thp pages" in log


def test_hugetlb_converted_copies(host, make_daemon):
    """A dtype conversion writes its copy into a segment of the same
    backend, in parts whose mappings start on 2 MiB boundaries."""
    host.pool(POOL_PAGES)
    host.thp("never")
    d = make_daemon("--huge-pages", "hugetlb")
    src = torch.nn.Sequential(torch.nn.Linear(2048, 2048),
                              torch.nn.Linear(2048, 1024))
    with wbroker.connect(d.socket) as c:
        c.publish("m", src)
        dst = torch.nn.Sequential(torch.nn.Linear(2048, 2048),
                                  torch.nn.Linear(2048, 1024)).to(
                                      torch.bfloat16)
        c.load_into(dst, "m", rules="cast * BF16\n")
        for k, t in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], t.to(torch.bfloat16)), k
    assert _counters(d)["bytes.4k"] == 0


def _rss_shmem():
    for line in open("/proc/self/status"):
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("how", ["state_dict", "load_into"])
def test_populate_makes_every_page_resident(make_daemon, how):
    d = make_daemon("--huge-pages", "off")
    src = torch.nn.Linear(4096, 2048)  # 32 MiB of weights
    with wbroker.connect(d.socket) as c:
        c.publish("m", src)
        before = _rss_shmem()
        if how == "state_dict":
            got = c.state_dict("m", populate=True)
        else:
            got = torch.nn.Linear(4096, 2048, device="meta")
            c.load_into(got, "m", populate=True)
        # Resident and mapped before any tensor is read.
        mid = _rss_shmem()
        assert mid - before >= 32 * MIB
        # Without populate nothing is faulted in at the call.
        lazy = c.state_dict("m")
        assert _rss_shmem() - mid < 2 * MIB
        del lazy
        sd = got if how == "state_dict" else got.state_dict()
        assert torch.equal(sd["weight"], src.weight.detach())


def test_bad_mode_is_a_usage_error(tmp_path):
    from wbt_daemon import BUILD
    r = subprocess.run([os.path.join(BUILD, "wbrokerd"), "--socket",
                        str(tmp_path / "s"), "--huge-pages", "2m"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "bad --huge-pages '2m'" in r.stderr
