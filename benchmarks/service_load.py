"""Load on the REST service: N clients for T seconds, mixing compress and denoise requests.

Starts ``clearvae serve`` on 127.0.0.1 (a free port, a random token) in a subprocess, runs
``--clients`` threads with one httpx client each that send requests back to back until
``--seconds`` have passed (or ``--max-requests`` in all), then reports requests per second,
p50 / p99 latency, 429 refusals (the bounded queue at work), errors, and the server's peak
resident memory (VmHWM from /proc). Writes service_load.json and service_load.md to --out.

    python benchmarks/service_load.py --clients 4 --seconds 10 --out runs/service-load

Only loopback traffic; the run stops by itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


@dataclass
class Sample:
    kind: str
    status: int  # HTTP status; 0: no answer (a client-side error)
    seconds: float


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def images(size: int, seed: int = 0) -> dict[str, bytes]:
    """A smooth colour picture (compress) and a noisy gray one at sigma 25 (denoise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 16 + 1, size // 16 + 1, 3))
    photo = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC))
    gray = photo.mean(-1) + rng.standard_normal((size, size)) * 25
    return {"compress": _png(photo), "denoise": _png(gray.clip(0, 255).astype(np.uint8))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident set size of a process (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(port: int, token: str, args: argparse.Namespace, log) -> subprocess.Popen:
    command = [sys.executable, "-m", "clearvae", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--queue", str(args.queue), "--timeout", str(args.timeout)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    env = {**os.environ, "CLEARVAE_TOKEN": token}
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: see server.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def client(url: str, token: str, files: dict[str, bytes], mix: float, end: float,
           budget: list[int], lock: threading.Lock, samples: list[Sample], seed: int) -> None:
    """Requests back to back until ``end`` or the shared request budget runs out."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=300) as http:
        while time.monotonic() < end:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            kind = "compress" if rng.random() < mix else "denoise"
            data = {"quality": "4"} if kind == "compress" else {"keep": "0", "samples": "2"}
            start = time.perf_counter()
            try:
                status = http.post(f"/api/{kind}", files={"image": ("x.png", files[kind])},
                                   data=data).status_code
            except httpx.HTTPError:
                status = 0
            with lock:
                samples.append(Sample(kind, status, time.perf_counter() - start))
            if status == 429:
                time.sleep(0.05)  # the server said busy: a short pause, as a client would


def summarise(samples: list[Sample], seconds: float) -> dict:
    def stats(group: list[Sample]) -> dict:
        ok = [s.seconds for s in group if s.status == 200]
        ms = np.array(ok) * 1000 if ok else np.array([np.nan])
        return {"requests": len(group), "ok": len(ok),
                "refused_429": sum(s.status == 429 for s in group),
                "errors": sum(s.status not in (200, 429) for s in group),
                "ok_per_s": len(ok) / seconds,
                "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}

    return {"all": stats(samples),
            **{k: stats([s for s in samples if s.kind == k]) for k in ("compress", "denoise")}}


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [f"# Service load: {c['clients']} clients, {result['seconds']:.1f} s",
             "", f"{result['machine']}; image {c['size']}x{c['size']}, "
             f"{c['mix']:.0%} compress (quality 4) / denoise (2 draws); server workers "
             f"{c['workers'] or 'default'}, queue {c['queue']}; peak server RSS "
             f"{result['server_peak_rss_mb'] or float('nan'):.0f} MiB.", "",
             "| requests | total | ok | 429 | errors | ok/s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["results"].items():
        lines.append(f"| {name} | {s['requests']} | {s['ok']} | {s['refused_429']} | "
                     f"{s['errors']} | {s['ok_per_s']:.2f} | {s['p50_ms']:.0f} | "
                     f"{s['p99_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--max-requests", type=int, default=10_000, help="stop after this many")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--mix", type=float, default=0.5, help="share of compress requests")
    p.add_argument("--workers", type=int, help="server workers (default: its own)")
    p.add_argument("--queue", type=int, default=8, help="server queue (default %(default)s)")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--out", default="runs/service-load")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_urlsafe(16)
    samples: list[Sample] = []
    with open(Path(args.out) / "server.log", "w") as log:  # the server's output
        server = start_server(port, token, args, log)
        try:
            files, lock, budget = images(args.size), threading.Lock(), [args.max_requests]
            start = time.monotonic()
            threads = [threading.Thread(target=client, args=(
                f"http://127.0.0.1:{port}", token, files, args.mix, start + args.seconds,
                budget, lock, samples, i)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.monotonic() - start
            rss = peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    result = {"config": vars(args), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores", "seconds": seconds, "server_peak_rss_mb": rss,
              "results": summarise(samples, seconds)}
    (Path(args.out) / "service_load.json").write_text(json.dumps(result, indent=2))
    (Path(args.out) / "service_load.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
