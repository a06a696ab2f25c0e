"""A real HTTP server on 127.0.0.1 answering the Hugging Face Hub API calls that ``huggingface_hub`` makes
for ``create_repo``, ``create_branch`` and ``upload_folder`` (read from huggingface_hub's own code):

- ``POST /api/repos/create``                            create a repo (409 when it exists)
- ``POST /api/models/{repo}/branch/{branch}``           create a branch
- ``POST /api/validate-yaml``                           check a README's metadata (legacy upload path)
- ``POST /api/models/{repo}/preupload/{revision}``      regular or LFS, per file
- ``POST /{repo}.git/info/lfs/objects/batch``           LFS upload instructions (basic transfer)
- ``PUT  /_lfs/{oid}`` and ``POST /_lfs/verify``         the LFS upload itself and its check
- ``POST /api/models/{repo}/commit/{revision}``         the commit: NDJSON, regular files inline (base64)

Point a client at it with ``HF_ENDPOINT=server.url``. Files whose names end with one of ``lfs_suffixes``
are answered "lfs" at preupload, as the Hub does for weights; the others "regular". (With ``hf_xet``
installed, huggingface_hub sends LFS files through Xet storage instead, which this server does not speak:
give it ``lfs_suffixes=()`` then, or set ``HF_HUB_DISABLE_XET=1``.) ``fail={"commit": 500}`` answers
that route with that status. Every request is recorded (method, path with query, headers, body), and every
committed file is kept, with its bytes, per repo and branch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [
    ("create", "POST", re.compile(r"^/api/repos/create$")),
    ("branch", "POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/?]+)$")),
    ("validate", "POST", re.compile(r"^/api/validate-yaml$")),
    ("preupload", "POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/?]+)$")),
    ("lfs_batch", "POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$")),
    ("lfs_upload", "PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$")),
    ("lfs_verify", "POST", re.compile(r"^/_lfs/verify$")),
    ("commit", "POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/?]+)$")),
]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    route: str | None


@dataclass
class Repo:
    private: bool | None = None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


class FakeHub:
    def __init__(self, *, lfs_suffixes: tuple[str, ...] = (".safetensors",), fail: dict[str, int] | None = None) -> None:
        self.lfs_suffixes = lfs_suffixes
        self.fail = dict(fail or {})
        self.requests: list[Request] = []
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _handle(self) -> None:
                body = self._body()
                path = self.path.split("?", 1)[0]
                route, match = next(((name, m) for name, method, pattern in ROUTES
                                     if method == self.command and (m := pattern.match(path))), (None, None))
                with hub._lock:
                    hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                                body, route))
                    if route is None:
                        status, reply = 404, {"error": f"fake hub: no route for {self.command} {path}"}
                    elif route in hub.fail:
                        status, reply = hub.fail[route], {"error": f"fake hub: {route} fails on purpose"}
                    else:
                        status, reply = hub._answer(route, match.groupdict(), body, self.headers)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _handle
            do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[branch])

    def _answer(self, route: str, params: dict[str, str], body: bytes, headers: Any) -> tuple[int, Any]:
        if route == "create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            visibility = payload.get("visibility", "private" if payload.get("private") else None)
            self.repos[repo_id] = Repo(private=None if visibility is None else visibility == "private")
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if route == "branch":
            repo = self.repos[params["repo"]]
            repo.branches.setdefault(params["rev"], dict(repo.branches["main"]))
            return 200, {}
        if route == "validate":
            return 200, {"errors": [], "warnings": []}
        if route == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular",
                 "shouldIgnore": False, "oid": None}
                for f in files
            ]}
        if route == "lfs_batch":
            objects = json.loads(body)["objects"]
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{self.url}/_lfs/{o['oid']}"},
                             "verify": {"href": f"{self.url}/_lfs/verify"}}}
                for o in objects
            ]}
        if route == "lfs_upload":
            if hashlib.sha256(body).hexdigest() != params["oid"]:
                return 400, {"error": "sha256 mismatch"}
            self.lfs_objects[params["oid"]] = body
            return 200, {}
        if route == "lfs_verify":
            oid = json.loads(body)["oid"]
            return (200, {}) if oid in self.lfs_objects else (404, {"error": "object not uploaded"})
        if route == "commit":
            branch = self.repos[params["repo"]].branches.setdefault(params["rev"], {})
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    branch[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    branch[value["path"]] = self.lfs_objects[value["oid"]]
            return 200, {"commitUrl": f"{self.url}/{params['repo']}/commit/{'0' * 40}", "commitOid": "0" * 40,
                         "success": True}
        raise AssertionError(route)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
