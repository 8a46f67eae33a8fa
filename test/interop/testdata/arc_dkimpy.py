#!/usr/bin/python3
"""Seal or validate ARC chains with dkimpy (Debian python3-dkim), an independent RFC 8617
implementation, for Postamt's ARC interop test. No DNS: keys come from a JSON file.

  arc_dkimpy.py sign MSGFILE KEYPEM SELECTOR DOMAIN SRVID   sealed message on stdout
  arc_dkimpy.py verify MSGFILE ZONEJSON                    {"cv": ..., "reason": ...} on stdout

sign uses the message's Authentication-Results field of SRVID for the new
ARC-Authentication-Results and takes cv from its arc= result (none when absent).
"""
import json
import sys

import dkim


def main():
    mode, msg = sys.argv[1], open(sys.argv[2], "rb").read()
    if mode == "sign":
        key = open(sys.argv[3], "rb").read()
        sel, dom, srv = (a.encode() for a in sys.argv[4:7])
        fields = dkim.arc_sign(msg, sel, dom, key, srv)
        if not fields:
            sys.exit("arc_sign added nothing (no Authentication-Results of %s?)" % sys.argv[6])
        sys.stdout.buffer.write(b"".join(fields) + msg)
    elif mode == "verify":
        zone = json.load(open(sys.argv[3]))

        def dnsfunc(name, timeout=5):
            if isinstance(name, bytes):
                name = name.decode()
            rec = zone.get(name.rstrip(".").lower())
            return rec.encode() if rec else None

        cv, _, reason = dkim.arc_verify(msg, dnsfunc=dnsfunc)
        print(json.dumps({"cv": cv.decode(), "reason": str(reason)}))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
