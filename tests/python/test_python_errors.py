"""Messages a Python user can act on: a memory-limit refusal is a
MemoryLimitError in human sizes, and a failed connect says once which
socket was tried and what to do."""
import pytest
import torch

import wbroker
from wbroker.errors import human_size

MiB = 1 << 20


def test_human_size():
    assert [human_size(n) for n in (0, 512, 1024, 1536, 4 << 30,
                                    int(1.5 * (1 << 30)), 3435973837)] == \
        ["0 B", "512 B", "1 KiB", "1.5 KiB", "4 GiB", "1.5 GiB", "3.2 GiB"]


# A publish past --memory-limit: the sizes the daemon counts (whole 2 MiB
# segments), in use and the limit, and what to do.
def test_memory_limit_publish(make_daemon):
    d = make_daemon("--memory-limit", "7M")
    with wbroker.connect(d.socket) as c:
        c.publish("a", {"w": torch.zeros(3 * MiB // 4)})
        with pytest.raises(wbroker.MemoryLimitError) as e:
            c.publish("b", {"w": torch.zeros(5 * MiB // 4)})
        err = e.value
        assert isinstance(err, wbroker.Error) and err.name == "ELIMIT"
        assert (err.needed, err.used, err.limit) == (6 * MiB, 4 * MiB,
                                                     7 * MiB)
        assert str(err) == ("publishing needs 6 MiB, 4 MiB of 7 MiB in use: "
                            "drop versions (Client.drop, wbroker rm) or give "
                            "wbrokerd a larger --memory-limit")
        assert "6291456 bytes" in err.detail
        assert [m.name for m in c.models()] == ["a"]
        # Making room as it says works.
        c.drop("a")
        assert c.publish("b", {"w": torch.zeros(5 * MiB // 4)}) == 1


# The converted copy a load asks for, past the limit: the daemon's text has
# no totals, so they are asked for; the target is untouched.
def test_memory_limit_conversion(make_daemon):
    d = make_daemon("--memory-limit", "5M")
    with wbroker.connect(d.socket) as c:
        c.publish("a", {"w": torch.ones(3 * MiB // 4)})
        t = torch.nn.Module()
        t.register_buffer("w", torch.zeros(3 * MiB // 4,
                                           dtype=torch.float16))
        with pytest.raises(wbroker.MemoryLimitError) as e:
            c.load_into(t, "a")
        assert str(e.value).startswith("converting 1 tensor needs 2 MiB, "
                                       "4 MiB of 5 MiB in use: ")
        assert (e.value.used, e.value.limit) == (4 * MiB, 5 * MiB)
        assert not t.w.any()


# A daemon that is not there: one sentence naming the socket, the reason
# and what to do, as a ConnectionError.
def test_connect_message(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(ConnectionError) as e:
        wbroker.connect(path)
    text = str(e.value)
    assert text.startswith("no wbrokerd listens at %s (No such file or "
                           "directory): start it" % path), text
    assert text.count(path) == 1 and "cannot connect" not in text
    for what in ("wbrokerd", "make run", "WBROKER_SOCKET",
                 "wbroker.connect(socket=...)"):
        assert what in text, what
    assert e.value.socket == path
