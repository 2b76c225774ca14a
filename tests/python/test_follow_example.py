"""examples/server.py follows examples/trainer.py, as the README says."""
import os
import re
import subprocess
import sys

from wbt_daemon import BUILD, ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def test_server_follows_the_trainer(daemon):
    env = daemon.env()
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    server = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, "server.py"), "--model", "tr",
         "--until", "4", "--seconds", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "following tr\n"
        r = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "trainer.py"), "--model",
             "tr", "--steps", "40", "--every", "10", "--socket",
             daemon.socket],
            env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, out + err
    served = [int(v) for v in re.findall(r"^serving tr@(\d+) ", out, re.M)]
    assert served and served[-1] == 4 and served == sorted(served), out
    assert re.search(r"^answered \d+ batches, last on tr@4$", out, re.M), out
