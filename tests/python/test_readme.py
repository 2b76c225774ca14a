"""The README's Python snippets run as written against a real daemon
(found through $WBROKER_SOCKET, as the README's setup says), without a
warning."""
import os
import re
import subprocess
import sys

import pytest

from wbt_daemon import BUILD, ROOT


def snippets():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


SNIPPETS = snippets()


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("code", SNIPPETS,
                         ids=["snippet%d" % i for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(daemon, tmp_path, code):
    env = dict(os.environ, WBROKER_SOCKET=daemon.socket,
               PYTHONPATH=os.path.join(ROOT, "client", "python"),
               WBROKER_LIB=os.path.join(BUILD, "libwbroker.so"))
    script = tmp_path / "snippet.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, "-W", "error", str(script)],
                       cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip(), "the snippet prints its result"
