#!/usr/bin/env python3
"""Independent DKIM verifier for Postamt's tests: Debian's python3-dkim (dkimpy).

Usage: dkimverify.py MESSAGE-FILE NAME=RECORD...
Each NAME=RECORD answers the TXT lookup of NAME (e.g. sel._domainkey.example.test) through
dkimpy's dnsfunc callback; any other name has no record. Prints one JSON object:
{"signatures": [{"d": ..., "s": ..., "a": ..., "ok": true/false}], "error": ""}.
"""
import json
import sys

try:
    import dkim
except ImportError as e:  # the Go test reports this as a missing tool
    print(json.dumps({"signatures": [], "error": "import dkim: %s" % e}))
    sys.exit(3)

records = {}
for arg in sys.argv[2:]:
    name, _, rec = arg.partition("=")
    records[name.rstrip(".").lower() + "."] = rec.encode()


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    name = name.lower()
    if not name.endswith("."):
        name += "."
    return records.get(name)


with open(sys.argv[1], "rb") as f:
    msg = f.read()

out = {"signatures": [], "error": ""}
try:
    d = dkim.DKIM(msg, minkey=1024)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    for i, raw in enumerate(sigs):
        tags = dkim.util.parse_tag_value(raw)
        ok = dkim.DKIM(msg, minkey=1024).verify(idx=i, dnsfunc=dnsfunc)
        out["signatures"].append({
            "d": tags.get(b"d", b"").decode(),
            "s": tags.get(b"s", b"").decode(),
            "a": tags.get(b"a", b"").decode(),
            "h": tags.get(b"h", b"").decode(),
            "ok": bool(ok),
        })
except Exception as e:  # noqa: BLE001 - any failure is a test failure, reported in JSON
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
