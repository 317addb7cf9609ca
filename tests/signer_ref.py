#!/usr/bin/env python3
"""Independent reference implementation of Alibaba Cloud API Gateway (X-Ca-*) signing,
written from the specification in /work/shared/notes/alibaba-signing.md, used by
tests/signer.rs to cross-check the Rust signer.

Reads one JSON request on stdin:
  {"secret", "app_key", "timestamp", "nonce", "stage" (optional), "sig_method",
   "extra_signed": [names], "method", "url" (path?query), "headers": [[k, v]],
   "body_b64"}
Writes JSON: {"string_to_sign": ..., "headers": [[k, v], ...]} (the headers to add).
"""
import base64
import hashlib
import hmac
import json
import sys
import urllib.parse

FIXED = ("accept", "content-md5", "content-type", "date")
NEVER = ("x-ca-signature", "x-ca-signature-headers") + FIXED


def main():
    req = json.load(sys.stdin)
    body = base64.b64decode(req["body_b64"])
    headers = {}  # lower-case name -> first value
    for k, v in req["headers"]:
        headers.setdefault(k.lower(), v.strip())

    added = [
        ("X-Ca-Key", req["app_key"]),
        ("X-Ca-Timestamp", str(req["timestamp"])),
        ("X-Ca-Nonce", req["nonce"]),
        ("X-Ca-Signature-Method", req["sig_method"]),
    ]
    if req.get("stage"):
        added.append(("X-Ca-Stage", req["stage"]))
    ctype = headers.get("content-type", "")
    is_form = ctype.lower().startswith("application/x-www-form-urlencoded")
    if body and not is_form:
        added.append(("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode()))
    for k, v in added:
        headers[k.lower()] = v

    names = {k for k in headers if k.startswith("x-ca-")}
    names |= {k.lower() for k in req["extra_signed"]}
    names = sorted(n for n in names if n not in NEVER)

    parts = [req["method"].upper()]
    parts += [headers.get(h, "") for h in FIXED]
    sts = "\n".join(parts) + "\n"
    for n in names:
        sts += n + ":" + headers.get(n, "") + "\n"

    path, _, query = req["url"].partition("?")
    params = {}
    for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if k and k not in params:
            params[k] = v
    if is_form:
        form = {}
        for k, v in urllib.parse.parse_qsl(body.decode(), keep_blank_values=True):
            if k and k not in form:
                form[k] = v
        params.update(form)
    sts += path
    if params:
        sts += "?" + "&".join(k if params[k] == "" else k + "=" + params[k] for k in sorted(params))

    digest = hashlib.sha1 if req["sig_method"] == "HmacSHA1" else hashlib.sha256
    sig = base64.b64encode(hmac.new(req["secret"].encode(), sts.encode(), digest).digest()).decode()
    added.append(("X-Ca-Signature-Headers", ",".join(names)))
    added.append(("X-Ca-Signature", sig))
    json.dump({"string_to_sign": sts, "headers": added}, sys.stdout)


if __name__ == "__main__":
    main()
