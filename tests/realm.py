"""A Keycloak stand-in for the tests that run the server with authentication on: a key pair and
a loopback endpoint serving the realm's public key (``GET /realms/<realm>``) and a password grant
for one user (dr_k / s3cret), so tokens are real RS256 tokens checked by the server."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

USER, ANNOTATOR, REVIEWER, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"
LADDER = [USER, ANNOTATOR, REVIEWER, ADMIN]


class Realm:
    """A key pair and a loopback HTTP endpoint serving its public key as Keycloak's realm does."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"realm": "segloop", "public_key": base64.b64encode(der).decode()}).encode()
        realm = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path == "/realms/segloop/.well-known/openid-configuration":
                    token_endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/realms/segloop/token"
                    return self.answer(200, json.dumps({"token_endpoint": token_endpoint}).encode())
                self.answer(200 if self.path == "/realms/segloop" else 404, body if self.path == "/realms/segloop" else b"{}")

            def do_POST(self):  # the password grant MONAI Label's /auth/token forwards: one user, dr_k / s3cret
                form = dict(p.split("=", 1) for p in self.rfile.read(int(self.headers["Content-Length"])).decode().split("&"))
                if self.path != "/realms/segloop/token" or (form.get("username"), form.get("password")) != ("dr_k", "s3cret"):
                    return self.answer(401, b'{"error": "invalid_grant"}')
                token = realm.token([ANNOTATOR], username="dr_k")
                self.answer(200, json.dumps({"access_token": token, "token_type": "bearer"}).encode())

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}/realms/segloop"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, roles, username="dr_a", expires_in=600, key=None):
        payload = {"preferred_username": username, "realm_access": {"roles": roles}, "exp": int(time.time()) + expires_in}
        pem = (key or self.key).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return jwt.encode(payload, pem, algorithm="RS256")
