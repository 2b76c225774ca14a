"""Unmapping off the caller's path (wbroker/release.py): the mapping whose
last view dies is unmapped by a background thread, so that load_into()
of the next version does not pay for the old one's munmap; the hold
still ends once the last view is gone, and flush_unmaps() waits for it."""
import gc
import os
import re
import threading

import torch

import wbroker


def segments(label):
    """Distinct segments (inodes) of model label this process maps."""
    pat = re.compile(r"/memfd:wbroker:%s( |$)" % re.escape(label))
    with open("/proc/self/maps") as f:
        return {line.split()[4] for line in f if pat.search(line)}


def publish(c, name, v):
    return c.publish(name, {"weight": torch.full((256, 256), float(v)),
                            "bias": torch.full((256,), float(v))})


def mine(c, name):
    return [h.version for h in c.holders(name) if h.pid == os.getpid()]


def test_reload_releases_the_old_version_after_flush(daemon):
    with wbroker.connect(daemon.socket) as c:
        publish(c, "m", 1)
        publish(c, "m", 2)
        model = torch.nn.Linear(256, 256)
        c.load_into(model, "m", 1)
        assert mine(c, "m") == [1]
        c.load_into(model, "m", 2)      # Drops version 1's last views.
        assert float(model.weight.detach()[0, 0]) == 2.0
        assert wbroker.flush_unmaps()
        assert mine(c, "m") == [2]      # At once after the flush.
        assert len(segments("m")) == 1
        del model
        gc.collect()
        assert wbroker.flush_unmaps()
        assert mine(c, "m") == [] and segments("m") == set()


def test_unmapped_by_the_thread_not_the_caller(daemon):
    with wbroker.connect(daemon.socket) as c:
        publish(c, "m", 1)
        sd = c.state_dict("m")
        assert wbroker.flush_unmaps()
        names = {t.name for t in threading.enumerate()}
        assert "wbroker-unmap" in names
        assert mine(c, "m") == [1]
        del sd
        gc.collect()
        assert wbroker.flush_unmaps(timeout=10)
        assert mine(c, "m") == []


def test_a_forked_child_releases_its_own(daemon):
    """After fork() the child has no unmapping thread; its first mapping
    starts one, and its releases end its holds."""
    with wbroker.connect(daemon.socket) as c:
        publish(c, "m", 1)
        keep = c.state_dict("m")        # The parent's, held throughout.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                    # pragma: no cover -- the child
            ok = 0
            try:
                with wbroker.connect(daemon.socket) as cc:
                    sd = cc.state_dict("m")
                    ok = float(sd["weight"][0, 0]) == 1.0
                    del sd
                    gc.collect()
                    ok = ok and wbroker.flush_unmaps(timeout=10)
                    ok = ok and os.getpid() not in {
                        h.pid for h in cc.holders("m")}
            finally:
                os.write(w, b"1" if ok else b"0")
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"1"
        os.close(r)
        os.waitpid(pid, 0)
        assert float(keep["weight"][0, 0]) == 1.0
        assert mine(c, "m") == [1]
        del keep
        gc.collect()
        assert wbroker.flush_unmaps()
        assert mine(c, "m") == []
