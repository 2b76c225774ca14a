"""Every public function of include/wbroker.h carries its contract.

A check of the header's text: each WB_EXTERN declaration has a comment of
its own right above it (no declaration shares another's, or has none),
and the comment of a function that returns an error code names the codes
(a WB_E* name, or the function whose codes it shares).
"""
import os
import re

import pytest

from wbt_daemon import ROOT

HEADER = os.path.join(ROOT, "include", "wbroker.h")


def declarations():
    """(function name, return type, comment above it or None) per
    WB_EXTERN declaration, in header order."""
    lines = open(HEADER).read().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"WB_EXTERN\s+(.*?)\b(wb_\w+)\(", line)
        if not m:
            continue
        comment = None
        j = i - 1
        if j >= 0 and lines[j].rstrip().endswith("*/"):
            while j >= 0 and "/*" not in lines[j]:
                j -= 1
            comment = " ".join(s.strip(" /*") for s in lines[j:i])
        out.append((m.group(2), m.group(1).strip(), comment))
    return out


DECLS = declarations()


def test_the_header_declares_the_api():
    names = [d[0] for d in DECLS]
    assert len(names) == len(set(names))
    for name in ("wb_connect", "wb_publish_begin", "wb_load", "wb_map_image",
                 "wb_rules_parse", "wb_schema_add", "wb_watch"):
        assert name in names


@pytest.mark.parametrize("name,ret,comment", DECLS,
                         ids=[d[0] for d in DECLS])
def test_every_public_function_has_its_contract(name, ret, comment):
    assert comment, "%s has no comment of its own" % name
    assert len(comment.split()) >= 8, "%s: %r" % (name, comment)
    if ret == "int":
        assert re.search(r"\bWB_E[A-Z]+\b|as wb_\w+\(\)", comment), \
            "%s returns an error code but names none" % name
