#!/usr/bin/env python3
"""Python smtplib client for the Postamt interop tests (test/interop).

Usage:
  smtplib_client.py send HOST PORT FROM SUBJECT RCPT...
      EHLO, STARTTLS (certificate not verified), EHLO again, send_message()
      to all RCPTs.
  smtplib_client.py utf8 HOST PORT FROM SUBJECT RCPT
      EHLO, then MAIL FROM with mail_options ["SMTPUTF8", "BODY=8BITMIME"],
      RCPT TO the (UTF-8) recipient and DATA of a UTF-8 message.

Prints one JSON object on stdout with what the server answered; the SMTP
transcript (smtplib debug output) goes to stderr. Exits non-zero on any
SMTP error (the JSON then has "error").
"""
import email.generator
import email.policy
import io
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage

HELO = "client.test"  # no getfqdn(): no DNS look-ups


def features(s):
    return {k.upper(): v for k, v in s.esmtp_features.items()}


def send(host, port, sender, subject, rcpts):
    out = {}
    with smtplib.SMTP(host, int(port), local_hostname=HELO, timeout=15) as s:
        s.set_debuglevel(1)
        out["ehlo_code"], _ = s.ehlo()
        out["ehlo_features"] = features(s)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        out["starttls_code"], _ = s.starttls(context=ctx)
        out["tls_version"] = s.sock.version()
        out["ehlo_tls_code"], _ = s.ehlo()
        out["ehlo_tls_features"] = features(s)
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = subject
        msg["Message-ID"] = "<smtplib-send@client.test>"
        msg.set_content("Sent by Python smtplib over STARTTLS.\nSecond line.\n")
        out["refused"] = s.send_message(msg, from_addr=sender, to_addrs=rcpts)
    return out


def utf8(host, port, sender, subject, rcpt):
    out = {}
    with smtplib.SMTP(host, int(port), local_hostname=HELO, timeout=15) as s:
        s.set_debuglevel(1)
        out["ehlo_code"], _ = s.ehlo()
        out["ehlo_features"] = features(s)
        msg = EmailMessage(policy=email.policy.SMTPUTF8)
        msg["From"] = sender
        msg["To"] = rcpt
        msg["Subject"] = subject
        msg["Message-ID"] = "<smtplib-utf8@client.test>"
        msg.set_content("Grüße aus Python, Ünïcödé ✓\n", cte="8bit")
        buf = io.BytesIO()
        email.generator.BytesGenerator(buf, policy=email.policy.SMTPUTF8).flatten(msg, linesep="\r\n")
        # What sendmail() does for mail_options=["SMTPUTF8"]: UTF-8 commands.
        s.command_encoding = "utf-8"
        code, resp = s.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"])
        out["mail"] = [code, resp.decode("utf-8", "replace")]
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, sender)
        code, resp = s.rcpt(rcpt)
        out["rcpt"] = [code, resp.decode("utf-8", "replace")]
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, resp)})
        code, resp = s.data(buf.getvalue())
        out["data"] = [code, resp.decode("utf-8", "replace")]
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)
    return out


def main():
    mode, host, port, sender, subject, *rcpts = sys.argv[1:]
    try:
        if mode == "send":
            out = send(host, port, sender, subject, rcpts)
        elif mode == "utf8":
            out = utf8(host, port, sender, subject, rcpts[0])
        else:
            raise SystemExit("unknown mode " + mode)
    except (smtplib.SMTPException, OSError) as e:
        print(json.dumps({"error": repr(e)}, ensure_ascii=False))
        return 1
    print(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
