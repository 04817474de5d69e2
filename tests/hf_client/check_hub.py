"""The real huggingface_hub client against a running qstore server.

Usage: python check_hub.py EXPECTED.json

EXPECTED.json (written by tests/it/hf_client.rs) names the server, the repo and, per revision
(main, bf16, int8), the commit id and the sha256 of every file. Checks:
  - hf_hub_download of each file at each revision gives exactly those bytes;
  - snapshot_download of each revision gives exactly that file set, under snapshots/<commit>;
  - a download whose connection breaks midway is resumed by the client with a Range request and
    still ends with the right bytes (through a proxy that cuts the first transfer in half);
  - missing repo / revision / file raise the client's typed errors.
Exits non-zero with a message on the first failure.
"""

import http.client
import http.server
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from common import sha256


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards to the server; cuts the first full GET of a .safetensors file after half its body."""

    daemon_threads = True

    def __init__(self, upstream):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream = upstream
        self.cut_done = False
        self.ranges_seen = []
        self.lock = threading.Lock()


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.forward(send_body=False)

    def do_GET(self):
        self.forward(send_body=True)

    def forward(self, send_body):
        host, port = self.server.upstream
        conn = http.client.HTTPConnection(host, port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        if "Range" in headers and self.path.endswith(".safetensors"):
            with self.server.lock:
                self.server.ranges_seen.append(headers["Range"])
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        body_len = int(resp.getheader("Content-Length", "0"))
        cut = False
        if send_body and self.path.endswith(".safetensors") and "Range" not in headers and resp.status == 200:
            with self.server.lock:
                if not self.server.cut_done:
                    self.server.cut_done = cut = True
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "date"):
                self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            limit = body_len // 2 if cut else body_len
            sent = 0
            while sent < limit:
                block = resp.read(min(1 << 16, limit - sent))
                if not block:
                    break
                self.wfile.write(block)
                sent += len(block)
        self.wfile.flush()
        conn.close()
        self.close_connection = True


def fail(msg):
    print(f"check_hub: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    expected = json.loads(Path(sys.argv[1]).read_text())
    host, port = expected["server"].removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{proxy.server_address[1]}"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    # Imported after HF_ENDPOINT is set: the client reads it at import time.
    import huggingface_hub
    from huggingface_hub import errors, hf_hub_download, snapshot_download

    print(f"check_hub: huggingface_hub {huggingface_hub.__version__} via {os.environ['HF_ENDPOINT']}")
    repo = expected["repo"]
    with tempfile.TemporaryDirectory() as tmp:
        for rev, want in expected["revisions"].items():
            cache = Path(tmp) / f"cache-{rev}"
            for path, digest in want["files"].items():
                got = hf_hub_download(repo, path, revision=rev, cache_dir=cache)
                if sha256(got) != digest:
                    fail(f"hf_hub_download {rev}/{path}: sha256 differs")
                if Path(got).parent.name != want["commit"] and "/" not in path:
                    fail(f"hf_hub_download {rev}/{path}: snapshot {Path(got).parent.name}, want {want['commit']}")
            snap = Path(snapshot_download(repo, revision=rev, cache_dir=Path(tmp) / f"snap-{rev}"))
            if snap.name != want["commit"]:
                fail(f"snapshot_download {rev}: folder {snap.name}, want commit {want['commit']}")
            files = {str(p.relative_to(snap)): sha256(p) for p in snap.rglob("*") if p.is_file()}
            if files != want["files"]:
                fail(f"snapshot_download {rev}: files differ:\n got {files}\nwant {want['files']}")
            # Pinned to the commit id, the same files come back.
            pinned = hf_hub_download(repo, "config.json", revision=want["commit"], cache_dir=cache)
            if sha256(pinned) != want["files"]["config.json"]:
                fail(f"config.json at commit {want['commit']}: sha256 differs")
            print(f"check_hub: {rev}: {len(files)} files exact (commit {want['commit']})")

        int8_config = json.loads(Path(hf_hub_download(repo, "config.json", revision="int8", cache_dir=Path(tmp) / "c")).read_text())
        if int8_config.get("quantization_config", {}).get("quant_method") != "bitsandbytes":
            fail("int8 config.json lacks the bitsandbytes quantization_config")

        if not proxy.cut_done:
            fail("the proxy never cut a download")
        resumed = [r for r in proxy.ranges_seen if r.startswith("bytes=") and not r.startswith("bytes=0-")]
        if not resumed:
            fail(f"the client did not resume with a Range request (saw {proxy.ranges_seen})")
        print(f"check_hub: interrupted download resumed with {resumed[0]!r}, bytes exact")

        for call, exc in [
            (lambda: hf_hub_download(repo, "no-such-file.json", cache_dir=Path(tmp) / "e"), errors.EntryNotFoundError),
            (lambda: hf_hub_download(repo, "config.json", revision="nope", cache_dir=Path(tmp) / "e"), errors.RevisionNotFoundError),
            (lambda: hf_hub_download(repo + "-missing", "config.json", cache_dir=Path(tmp) / "e"), errors.RepositoryNotFoundError),
        ]:
            try:
                call()
            except exc:
                continue
            except Exception as e:  # noqa: BLE001
                fail(f"expected {exc.__name__}, got {type(e).__name__}: {e}")
            fail(f"expected {exc.__name__}, got success")
        print("check_hub: missing entry / revision / repo raise the typed errors")
    proxy.shutdown()
    print("check_hub: OK")


if __name__ == "__main__":
    main()
