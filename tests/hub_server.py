"""A local stand-in for the Hugging Face Hub's upload API, for offline push tests.

It serves only what `huggingface_hub` 2.4 calls to create a repository and commit files
(../shared/reference/hf_conventions.md §5): `POST /api/repos/create`, `POST /api/models/{repo}/branch/{b}`,
`POST /api/models/{repo}/preupload/{rev}` (every file "regular": uploaded inline, no LFS / Xet),
`POST /api/models/{repo}/commit/{rev}` (NDJSON body, files base64), `HEAD|GET /{repo}/resolve/{rev}/{path}`
(404 EntryNotFound: no card yet) and `POST /api/validate-yaml`. Requests without a bearer token are
refused with 401, a namespace named "forbidden" with 403, as the Hub does. Everything it receives is
kept in `HubServer.repos` / `commits` / `log`.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

OID = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self):
        self.repos = {}  # repo id → {"private": bool, "branches": set}
        self.commits = []  # {"repo", "revision", "create_pr", "summary", "files": {path: bytes}}
        self.log = []  # (method, path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body=None, headers=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self):
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _authorized(self):
                if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                    self._reply(401, {"error": "Invalid credentials in Authorization header"},
                                {"X-Error-Message": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_HEAD(self):
                server.log.append(("HEAD", self.path))
                self._reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

            do_GET = do_HEAD

            def do_POST(self):
                url = urlparse(self.path)
                path, query = unquote(url.path), parse_qs(url.query)
                server.log.append(("POST", path))
                body = self._body()
                if path == "/api/validate-yaml":
                    return self._reply(200, {})
                if not self._authorized():
                    return None
                if path == "/api/repos/create":
                    spec = json.loads(body)
                    repo = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
                    if repo.startswith("forbidden/"):
                        return self._reply(403, {"error": "You don't have the rights to create a model under this "
                                                          "namespace"})
                    private = spec.get("visibility") == "private" or spec.get("private") is True
                    server.repos.setdefault(repo, {"private": private,
                                                   "branches": {"main"}})
                    return self._reply(200, {"url": f"{server.url}/{repo}", "name": repo})
                m = re.match(r"^/api/models/(.+?/.+?)/(preupload|commit|branch)/(.+)$", path)
                if not m:
                    return self._reply(404, {"error": f"no route {path}"})
                repo, action, revision = m.groups()
                if repo not in server.repos:
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if action == "branch":
                    server.repos[repo]["branches"].add(revision)
                    return self._reply(200, {})
                if revision not in server.repos[repo]["branches"]:
                    return self._reply(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                files, summary = {}, None
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        summary = item["value"].get("summary")
                    elif item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
                server.commits.append({"repo": repo, "revision": revision, "create_pr": create_pr,
                                       "summary": summary, "files": files})
                reply = {"commitUrl": f"{server.url}/{repo}/commit/{OID}", "commitOid": OID}
                if create_pr:
                    reply["pullRequestUrl"] = f"{server.url}/{repo}/discussions/1"
                return self._reply(200, reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
