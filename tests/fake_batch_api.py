"""The OpenAI Batch API (files + batches endpoints) on top of FakeJudgeServer, for tests of `--batch`.

POST /v1/files (multipart, purpose=batch) stores a JSONL of requests; POST /v1/batches starts answering them in
a background thread after `batch_seconds` (each line goes through the same fault schedule and answer logic as
a live call, and counts in `calls`); GET /v1/batches/{id} polls; GET /v1/files/{id}/content returns the output
JSONL ({"custom_id", "response": {"status_code", "body"}, "error"} per line). `batches_created` lets a test
check that an interrupted run resumed by polling instead of submitting again.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time


class _Capture:
    """Stands in for the HTTP handler: keeps what the fake server would have sent."""

    def __init__(self, auth: str):
        self.headers = {"Authorization": auth}
        self.close_connection = False
        self.status, self.body = 500, {"error": {"message": "no answer"}}

    def _send(self, status, body, headers=None):
        self.status, self.body = status, json.loads(body) if isinstance(body, str) else body


class BatchAPI:
    def __init__(self, owner, batch_seconds: float = 0.2):
        self.owner, self.batch_seconds = owner, batch_seconds
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batches_created = 0
        self._lock = threading.Lock()

    def _file_id(self, data: bytes) -> str:
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = data
        return fid

    def upload(self, content_type: str, body: bytes) -> tuple[int, dict]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                 for p in msg.iter_parts()}
        if parts.get("purpose") != b"batch" or "file" not in parts:
            return 400, {"error": {"message": "expected purpose=batch and a file"}}
        fid = self._file_id(parts["file"])
        return 200, {"id": fid, "object": "file", "bytes": len(parts["file"]), "created_at": int(time.time()),
                     "filename": "batch.jsonl", "purpose": "batch", "status": "processed"}

    def create(self, request: dict, auth: str) -> tuple[int, dict]:
        if request.get("input_file_id") not in self.files or request.get("endpoint") != "/v1/chat/completions":
            return 400, {"error": {"message": "unknown input_file_id or endpoint"}}
        with self._lock:
            self.batches_created += 1
            bid = f"batch_{self.batches_created}"
            batch = {"id": bid, "object": "batch", "endpoint": request["endpoint"],
                     "input_file_id": request["input_file_id"], "completion_window": "24h",
                     "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
                     "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0}}
            self.batches[bid] = batch
        threading.Thread(target=self._work, args=(bid, auth), daemon=True).start()
        return 200, batch

    def _work(self, bid: str, auth: str) -> None:
        time.sleep(self.batch_seconds)
        batch = self.batches[bid]
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        out = []
        for line in lines:
            cap = _Capture(auth)
            self.owner.handle(cap, line["body"], batch=True)
            out.append({"id": f"req-{line['custom_id'][:8]}", "custom_id": line["custom_id"],
                        "response": {"status_code": cap.status, "request_id": "r", "body": cap.body},
                        "error": None})
        fid = self._file_id("".join(json.dumps(o) + "\n" for o in out).encode())
        with self._lock:
            batch.update(status="completed", output_file_id=fid,
                         request_counts={"total": len(lines), "completed": len(lines), "failed": 0})

    def route(self, handler, method: str, path: str, body: bytes) -> bool:
        """Answer a files/batches request; False when the path is not one of ours."""
        path = path.split("?")[0].rstrip("/").removeprefix("/v1")
        auth = handler.headers.get("Authorization", "")
        if method == "POST" and path == "/files":
            status, payload = self.upload(handler.headers.get("Content-Type", ""), body)
        elif method == "POST" and path == "/batches":
            status, payload = self.create(json.loads(body or b"{}"), auth)
        elif method == "GET" and path.startswith("/batches/") and path.split("/")[2] in self.batches:
            status, payload = 200, self.batches[path.split("/")[2]]
        elif method == "GET" and path.startswith("/files/") and path.endswith("/content"):
            fid = path.split("/")[2]
            if fid not in self.files:
                status, payload = 404, {"error": {"message": "no such file"}}
            else:
                handler._send(200, self.files[fid].decode())
                return True
        else:
            return False
        handler._send(status, payload)
        return True
