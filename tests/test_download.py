"""Downloads against a local HTTP server serving a small fixture: resume, truncation, checksums, offline."""
import hashlib
import http.server
import socket
import threading

import pytest

from minillm.data import RemoteCorpus, RemoteFile, download

FIXTURE = "".join(f"story {i}: once upon a time there was a token.\n<|endoftext|>\n" for i in range(400)).encode()
SHA = hashlib.sha256(FIXTURE).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    "Serves FIXTURE at /ok.txt (with Range support) and at /flaky.txt, which cuts the first transfer short."
    cut_once = {"flaky": True}

    def log_message(self, *a): pass

    def do_GET(self):
        if self.path not in ("/ok.txt", "/flaky.txt"): self.send_error(404); return
        start = 0
        if rng := self.headers.get("Range"): start = int(rng.split("=")[1].split("-")[0])
        body = FIXTURE[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        if start: self.send_header("Content-Range", f"bytes {start}-{len(FIXTURE) - 1}/{len(FIXTURE)}")
        self.end_headers()
        if self.path == "/flaky.txt" and self.cut_once["flaky"]:
            self.cut_once["flaky"] = False
            self.wfile.write(body[: len(body) // 3]); self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR); return          # a truncated transfer
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Handler.cut_once["flaky"] = True
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_download_verifies_checksum_and_size(server, tmp_path):
    "A clean download lands whole under its name, with no .part left."
    p = download(f"{server}/ok.txt", tmp_path / "ok.txt", sha256=SHA, size=len(FIXTURE), progress=False)
    assert p.read_bytes() == FIXTURE and not (tmp_path / "ok.txt.part").exists()


def test_truncated_transfer_resumes(server, tmp_path):
    "The first transfer is cut after a third; the download resumes with a range request and ends identical."
    p = download(f"{server}/flaky.txt", tmp_path / "f.txt", sha256=SHA, size=len(FIXTURE), progress=False)
    assert p.read_bytes() == FIXTURE


def test_resume_from_existing_part(server, tmp_path):
    "A .part left by an interrupted run is continued, not restarted."
    (tmp_path / "r.txt.part").write_bytes(FIXTURE[:1000])
    assert download(f"{server}/ok.txt", tmp_path / "r.txt", sha256=SHA, progress=False).read_bytes() == FIXTURE


def test_checksum_mismatch_is_refused(server, tmp_path):
    "A wrong sha256: a clear error, and neither the file nor a .part is left behind."
    with pytest.raises(ValueError, match="checksum mismatch"):
        download(f"{server}/ok.txt", tmp_path / "bad.txt", sha256="0" * 64, progress=False)
    assert not list(tmp_path.iterdir())


def test_missing_file_and_offline(server, tmp_path):
    "HTTP 404 and a refused connection both give errors that suggest the builtin corpus or a local path."
    with pytest.raises(ConnectionError, match="HTTP 404.*--corpus builtin"):
        download(f"{server}/nope.txt", tmp_path / "n.txt", progress=False)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    with pytest.raises(ConnectionError, match="Offline\\? Use --corpus builtin"):
        download(f"http://127.0.0.1:{port}/x.txt", tmp_path / "x.txt", retries=2, progress=False)


def test_remote_corpus_documents(server, tmp_path, monkeypatch):
    "A downloaded text corpus splits into documents at <|endoftext|> and into train/val by document name."
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path))
    c = RemoteCorpus("stories", [RemoteFile(f"{server}/ok.txt", sha256=SHA)])
    docs = [t for _, t in c.documents()]
    assert len(docs) == 400 and docs[7] == "story 7: once upon a time there was a token."
    train, val = list(c.split("train")), list(c.split("val"))
    assert len(train) + len(val) == 400 and val and not set(train) & set(val)
    capped = RemoteCorpus("stories", [RemoteFile(f"{server}/ok.txt")], max_bytes=200)
    assert len(list(capped.documents())) < 10
