"""A small Hugging Face Hub on 127.0.0.1 for tests: the real `huggingface_hub` client downloads from it and pushes
to it over HTTP when HF_ENDPOINT points at `Hub.endpoint`.

Downloads: HEAD and GET /[datasets/]OWNER/REPO/resolve/REVISION/PATH with the headers the client keeps in its cache
(X-Repo-Commit, ETag, Content-Length), and the Hub's 404/401 answers with their X-Error-Code (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo). Uploads: what `HfApi.create_repo` and `upload_folder` call for files
sent inline (repos/create, validate-yaml, preupload answering "regular", and the ndjson commit with base64 content).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    """Commits (hash -> {path: bytes}) and refs (branch -> commit hash); a gated one refuses anonymous reads."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    private: bool = False  # as created (the server does not hide a private repository)


def commit_hash(files: dict[str, bytes], parent: str = "") -> str:
    """A 40-hex commit id that depends on the files and the parent commit, as git's does."""
    digest = hashlib.sha1(parent.encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
    return digest.hexdigest()


class Hub:
    """`with Hub() as hub:` serves `hub.repos` (repo id -> Repo; dataset repos keyed 'datasets/OWNER/NAME') at
    `hub.endpoint` until the block ends; `hub.requests` lists (method, path) of every request."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit `files` (with those of the branch's head) to `branch` of `repo_id`; returns the commit hash."""
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.refs.get(branch, "")
        tree = {**repo.commits.get(parent, {}), **files}
        sha = commit_hash(tree, parent)
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return sha

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving: later requests find no server."""
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        def _reply(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"",
                   send_body: bool = True) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _json(self, status: int, value: object) -> None:
            self._reply(status, {"Content-Type": "application/json"}, json.dumps(value).encode())

        def _error(self, status: int, code: str, send_body: bool, headers: dict[str, str] | None = None) -> None:
            self._reply(status, {"X-Error-Code": code, **(headers or {})}, code.encode(), send_body)

        def _resolve(self, send_body: bool) -> None:
            path = urlsplit(self.path).path.lstrip("/")
            prefix = "datasets/" if path.startswith("datasets/") else ""
            parts = path[len(prefix):].split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "RepoNotFound", send_body)
            repo_id, revision, file = prefix + "/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:]))
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", send_body)
            if repo.gated and "authorization" not in {name.lower() for name in self.headers}:
                return self._error(401, "GatedRepo", send_body)
            sha = repo.refs.get(revision, revision if revision in repo.commits else None)
            if sha is None:
                return self._error(404, "RevisionNotFound", send_body)
            content = repo.commits[sha].get(file)
            if content is None:
                return self._error(404, "EntryNotFound", send_body, {"X-Repo-Commit": sha})
            self._reply(200, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                              "Content-Type": "application/octet-stream"}, content, send_body)

        def do_HEAD(self) -> None:
            hub.requests.append(("HEAD", self.path))
            self._resolve(send_body=False)

        def do_GET(self) -> None:
            hub.requests.append(("GET", self.path))
            self._resolve(send_body=True)

        def do_POST(self) -> None:
            hub.requests.append(("POST", self.path))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = urlsplit(self.path).path
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") \
                    else request["name"]
                private = request.get("visibility") == "private" or bool(request.get("private"))  # new or old client
                hub.repos.setdefault(repo_id, Repo(private=private))
                return self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            parts = path.split("/")  # '', 'api', 'models', OWNER, NAME, 'preupload' | 'commit', REVISION
            if len(parts) == 7 and parts[1] == "api" and parts[2] == "models":
                repo_id, action, branch = f"{parts[3]}/{parts[4]}", parts[5], unquote(parts[6])
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", True)
                if action == "preupload":
                    files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in json.loads(body)["files"]]
                    return self._json(200, {"files": files})
                if action == "commit":
                    added = {}
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    sha = hub.add(repo_id, added, branch)
                    return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}",
                                            "commitOid": sha, "pullRequestUrl": None})
            self._error(404, "EntryNotFound", True)

    return Handler
