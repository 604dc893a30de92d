"""The demo under load: normal photos while 16-megapixel uploads arrive at the same time.

Starts `python -m maskclf demo` on 127.0.0.1 only (the tiny test model unless `--model` is
given; the real CenterFace detector), sends `--normal` photos of the data set and `--large`
uploads of `--large-side` px (a data set photo upscaled, as JPEG) all at once, each from its
own thread, waits for every answer (at most `--timeout` s each), stops the server and reports:
whether it survived, its peak RSS (VmHWM), and the latency and status of each kind of request.
With `--slow N`, N slow clients (half silent, half sending half a request head) hold connections
open all the while; it reports how long the server kept them. Only loopback traffic; it stops by itself.

    python benchmarks/demo_load.py [--model models/<run>] [--normal 40 --large 5 --large-side 4000] [--slow 16]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "face-mask-detection" / "images"
TINY_RUN = "import sys; sys.path.insert(0, 'tests'); from tinymodel import make_tiny_run; make_tiny_run(sys.argv[1])"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field `file`, and its content type."""
    boundary = "maskclf-load-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, name: str, data: bytes, timeout: float) -> tuple[str, int, float]:
    """(name, HTTP status or 0 for no answer, seconds) of one upload."""
    body, content_type = multipart(name, data)
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return name, status, time.monotonic() - start


def large_upload(photo: Path, side: int) -> bytes:
    """A data set photo upscaled to `side` x `side` px, as a JPEG (quality 90)."""
    buffer = io.BytesIO()
    Image.open(photo).convert("RGB").resize((side, side), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def hold_slow_clients(port: int, n: int) -> list[tuple[socket.socket, float]]:
    """`n` connections to the server that never finish a request: half say nothing, half send half a head."""
    held = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        if i % 2:
            sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: demo\r\nContent-Type: multipart/form-data")
        held.append((sock, time.monotonic()))
    return held


def held_seconds(held: list[tuple[socket.socket, float]], limit_s: float) -> list[float]:
    """How long the server kept each slow connection open (`limit_s` when still open by then)."""
    seconds = []
    for sock, opened in held:
        sock.settimeout(max(limit_s - (time.monotonic() - opened), 0.01))
        try:
            while sock.recv(65536):
                pass
            seconds.append(time.monotonic() - opened)
        except ConnectionResetError:
            seconds.append(time.monotonic() - opened)
        except OSError:
            seconds.append(limit_s)
        sock.close()
    return seconds


def wait_healthy(url: str, server: subprocess.Popen, deadline_s: float = 180) -> None:
    """Wait until the server answers /healthz; RuntimeError if it dies or takes too long."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with status {server.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the demo did not answer within {deadline_s:.0f} s")


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(label: str, results: list[tuple[str, int, float]]) -> str:
    """One line: how many of each status, and median/max latency."""
    statuses = {s: sum(r[1] == s for r in results) for s in sorted({r[1] for r in results})}
    times = [r[2] for r in results]
    return (f"{label}: {len(results)} requests, status {statuses}, latency median {statistics.median(times):.1f} s, "
            f"max {max(times):.1f} s; answered with a result (200): max "
            f"{max((r[2] for r in results if r[1] == 200), default=float('nan')):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="run folder (default: the tiny test model)")
    parser.add_argument("--normal", type=int, default=40, help="normal photos sent at once (default: %(default)s)")
    parser.add_argument("--large", type=int, default=5, help="large uploads sent at once (default: %(default)s)")
    parser.add_argument("--large-side", type=int, default=4000, help="side of a large upload, px (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="longest wait for one answer, s (default: %(default)s)")
    parser.add_argument("--slow", type=int, default=0, help="slow clients holding connections (default: %(default)s)")
    args = parser.parse_args()

    photos = sorted(DATA.glob("*.png"))[: args.normal]
    normal = [(p.name, p.read_bytes()) for p in photos]
    big = large_upload(photos[0], args.large_side)
    large = [(f"large{i}.jpg", big) for i in range(args.large)]
    print(f"{len(normal)} photos of {DATA} ({max(Image.open(p).size[0] for p in photos)} px at most), "
          f"{len(large)} uploads of {args.large_side}x{args.large_side} px ({len(big) / 1e6:.1f} MB JPEG)")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(Path(tmp) / "tiny")
        if args.model is None:
            subprocess.run([sys.executable, "-c", TINY_RUN, model], cwd=ROOT, check=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = subprocess.Popen([sys.executable, "-m", "maskclf", "demo", "--model", model, "--host", "127.0.0.1",
                                   "--port", str(port)], cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        try:
            wait_healthy(url, server)
            post(url + "api/predict", *normal[0], args.timeout)  # warm-up: first calls trace the model
            idle_mb = peak_rss_mb(server.pid)
            held = hold_slow_clients(port, args.slow)
            with ThreadPoolExecutor(len(normal) + len(large)) as pool:
                futures = [pool.submit(post, url + "api/predict", name, data, args.timeout) for name, data in large]
                futures += [pool.submit(post, url + "api/predict", name, data, args.timeout) for name, data in normal]
                results = [f.result() for f in futures]
            alive = server.poll() is None
            peak_mb = peak_rss_mb(server.pid) if alive else float("nan")
            kept = held_seconds(held, limit_s=args.timeout)
        finally:
            server.terminate()
            server.wait(30)
    print(f"server survived: {alive}; peak RSS {peak_mb:.0f} MB (after the warm-up: {idle_mb:.0f} MB)")
    print(summary("normal photos", results[len(large):]))
    print(summary(f"{args.large_side}-px uploads", results[: len(large)]))
    if kept:
        print(f"{len(kept)} slow clients: kept open {min(kept):.1f}-{max(kept):.1f} s "
              f"({sum(k >= args.timeout for k in kept)} still open after {args.timeout:.0f} s)")
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
