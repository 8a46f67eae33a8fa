#!/usr/bin/env python3
"""Python smtplib submission client for the Postamt interop tests.

Usage: submit_client.py MODE HOST PORT USER PASSWORD FROM-HEADER RCPT SUBJECT
  MODE starttls: SMTP, EHLO (records whether AUTH is offered in plain text),
                 AUTH before TLS (records the reply), MAIL before TLS,
                 STARTTLS, EHLO, MAIL before AUTH, login(), send_message().
  MODE ssl:      SMTP_SSL (implicit TLS, RFC 8314), EHLO, login(), send_message().
The message has a folded Subject, an 8-bit UTF-8 body and trailing blank lines;
it has no Date or Message-ID (the server adds them, RFC 6409 section 8).
Prints one JSON object; exit status 1 on an SMTP error (the JSON has "error"
and, for a refusal, "code" and "reply").
"""
import base64
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

HELO = "client.test"


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def message(from_header, rcpt, subject):
    msg = EmailMessage(policy=SMTP_POLICY.clone(max_line_length=40))
    msg["From"] = from_header
    msg["To"] = rcpt
    msg["Subject"] = subject  # long enough to be folded at 40 columns
    msg.set_content("Grüße aus Python über Submission ✓\nZweite Zeile.\n\n\n\n", cte="8bit")
    return msg


def main():
    mode, host, port, user, password, from_header, rcpt, subject = sys.argv[1:]
    out = {}
    try:
        if mode == "starttls":
            s = smtplib.SMTP(host, int(port), local_hostname=HELO, timeout=15)
            s.set_debuglevel(1)
            s.ehlo()
            out["auth_offered_plain"] = s.has_extn("auth")
            plain = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
            out["auth_before_tls"] = list(s.docmd("AUTH", "PLAIN " + plain))
            out["mail_before_tls"] = list(s.docmd("MAIL", "FROM:<%s>" % user))
            s.starttls(context=ctx())
            out["tls_version"] = s.sock.version()
            s.ehlo()
            out["mail_before_auth"] = list(s.docmd("MAIL", "FROM:<%s>" % user))
        else:
            s = smtplib.SMTP_SSL(host, int(port), local_hostname=HELO, timeout=15, context=ctx())
            s.set_debuglevel(1)
            out["tls_version"] = s.sock.version()
            s.ehlo()
        out["auth_offered"] = s.esmtp_features.get("auth", "")
        code, resp = s.login(user, password)
        out["login"] = [code, resp.decode()]
        for k in ("auth_before_tls", "mail_before_tls", "mail_before_auth"):
            if k in out:
                out[k][1] = out[k][1].decode()
        refused = s.send_message(message(from_header, rcpt, subject), from_addr=user, to_addrs=[rcpt])
        out["refused"] = {k: [v[0], v[1].decode()] for k, v in refused.items()}
        s.quit()
    except smtplib.SMTPResponseException as e:
        out["error"] = repr(e)
        out["code"] = e.smtp_code
        out["reply"] = e.smtp_error.decode("utf-8", "replace")
    except (smtplib.SMTPException, OSError) as e:
        out["error"] = repr(e)
    for k in ("auth_before_tls", "mail_before_tls", "mail_before_auth"):
        if k in out and isinstance(out[k][1], bytes):
            out[k][1] = out[k][1].decode()
    print(json.dumps(out, ensure_ascii=False))
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
