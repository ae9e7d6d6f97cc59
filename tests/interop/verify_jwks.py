"""Verifies a JWT against a JWKS document with PyJWT: a second ecosystem reading only the ConfigMap.

Usage: verify_jwks.py JWKS_JSON_FILE TOKEN AUDIENCE
Prints the verified kid, or exits 1 with the reason.
"""
import json
import sys

import jwt


def main() -> int:
    jwks_file, token, audience = sys.argv[1:4]
    with open(jwks_file, encoding="utf-8") as f:
        jwks = jwt.PyJWKSet.from_dict(json.load(f))
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [k for k in jwks.keys if k.key_id == kid]
    if not keys:
        print(f"no key with kid {kid!r} in the JWKS", file=sys.stderr)
        return 1
    try:
        jwt.decode(token, keys[0], algorithms=[keys[0].algorithm_name], audience=audience)
    except jwt.PyJWTError as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    print(kid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
