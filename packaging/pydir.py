"""pydir.py -- the directory `make install` puts the Python package in.

    python3 packaging/pydir.py PREFIX

Debian's python3 looks in /usr/lib/python3/dist-packages (its packages'
place, for PREFIX=/usr) and /usr/local/lib/python3.X/dist-packages (for
PREFIX=/usr/local, where pip and `make install` put what Debian does not
manage); both come from its own install schemes.  Any other prefix, and a
Python without those schemes, gets the standard posix_prefix layout,
PREFIX/lib/python3.X/site-packages, which such a Python's sys.path holds
for its own prefix and which elsewhere needs PYTHONPATH.
"""
import sys
import sysconfig

prefix = sys.argv[1].rstrip("/") or "/"
schemes = sysconfig.get_scheme_names()
if prefix == "/usr" and "deb_system" in schemes:
    scheme, base = "deb_system", "/usr"
elif prefix == "/usr/local" and "posix_local" in schemes:
    scheme, base = "posix_local", "/usr"  # {base}/local/lib/python3.X/...
else:
    scheme, base = "posix_prefix", prefix
print(sysconfig.get_path("purelib", scheme, vars={"base": base,
                                                  "platbase": base}))
