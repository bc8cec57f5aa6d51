"""Load test of `mmlab serve`: a real uvicorn process on loopback, dynamic batching off and on, in one run.

Run: python bench/serve.py [--checkpoint DIR] [--requests 400 --concurrency 32 --time-cap 60]
Without --checkpoint a classifier is trained first (`mmlab train`, av_digits, late fusion, a few seconds).
For each configuration it starts the server, sends a fixed number of multimodal requests (image + audio + text)
with bounded concurrency, stops at the time cap, and prints throughput, p50/p95/p99 latency and the error count;
then the throughput ratio batching on / off.
"""
import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmlab.core import format_table


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def payloads(n, seed=0, kind="full"):
    "n requests built from generated validation digits: (files, data) for httpx; kind 'text' sends the text field only."
    import soundfile as sf
    from mmlab.data.synth import make_av_digits
    out = []
    for r in make_av_digits(min(n, 200), seed=seed + 1):
        img, wav = io.BytesIO(), io.BytesIO()
        r["image"].save(img, "PNG"); sf.write(wav, np.asarray(r["audio"], dtype="float32"), r["sampling_rate"], format="WAV")
        files = {"image": ("d.png", img.getvalue(), "image/png"), "audio": ("d.wav", wav.getvalue(), "audio/wav")}
        out.append((files if kind == "full" else None, {"text": r["text"]}))
    return [out[i % len(out)] for i in range(n)]


def start(checkpoint, max_batch, port, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", "import sys; from mmlab.cli import main; sys.exit(main())", "serve", "--checkpoint", str(checkpoint),
           "--port", str(port), "--max-batch-size", str(max_batch), "--max-wait-ms", "5"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(client, url, proc, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if (await client.get(url + "/ready")).status_code == 200: return
        except Exception: pass
        await asyncio.sleep(0.3)
    raise SystemExit(f"the server was not ready after {timeout} s")


async def load(url, reqs, concurrency, time_cap):
    import httpx
    lat, errors, sem = [], 0, asyncio.Semaphore(concurrency)
    deadline = time.perf_counter() + time_cap
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(files, data):
            nonlocal errors
            async with sem:
                if time.perf_counter() > deadline: return
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/predict/multimodal", files=files, data=data)
                    ok = r.status_code == 200
                except httpx.HTTPError: ok = False
                lat.append(time.perf_counter() - t0); errors += not ok
        t0 = time.perf_counter()
        await asyncio.gather(*(one(f, d) for f, d in reqs))
        wall = time.perf_counter() - t0
    q = np.percentile(lat, [50, 95, 99]) * 1000 if lat else [float("nan")] * 3
    return {"sent": len(lat), "errors": errors, "requests/s": len(lat) / wall, "p50 ms": q[0], "p95 ms": q[1], "p99 ms": q[2]}


async def run_one(checkpoint, max_batch, reqs, a):
    import httpx
    port = free_port(); url = f"http://127.0.0.1:{port}"
    proc = start(checkpoint, max_batch, port, a.threads)
    try:
        async with httpx.AsyncClient() as c: await wait_ready(c, url, proc)
        await load(url, reqs[: min(len(reqs), 2 * a.concurrency)], a.concurrency, a.time_cap)   # warm-up
        return {"max batch": max_batch, **await load(url, reqs, a.concurrency, a.time_cap)}
    finally:
        proc.terminate(); proc.wait(10)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None); p.add_argument("--requests", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=32); p.add_argument("--time-cap", type=float, default=60.0)
    p.add_argument("--batch", type=int, default=16, help="max batch size of the batching configuration")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--payload", choices=("full", "text"), default="full", help="image + audio + text, or text only")
    a = p.parse_args(argv)
    checkpoint = a.checkpoint
    if checkpoint is None:
        from mmlab.cli import train_main
        checkpoint = Path(tempfile.mkdtemp(prefix="mmlab-bench-")) / "run"
        train_main(["--dataset", "av_digits", "--fusion-strategy", "late", "--epochs", "2", "--pretrain-epochs", "1", "--n-train", "400",
                    "--n-val", "100", "--output", str(checkpoint), "--no-progress"])
    reqs = payloads(a.requests, kind=a.payload)
    print(f"{a.requests} requests ({'image + audio + text' if a.payload == 'full' else 'text only'}), {a.concurrency} concurrent, time cap {a.time_cap:.0f} s, server threads {a.threads}")
    rows = [asyncio.run(run_one(checkpoint, 1, reqs, a)), asyncio.run(run_one(checkpoint, a.batch, reqs, a))]
    print(format_table(rows))
    print(f"throughput ratio, batching on / off: {rows[1]['requests/s'] / rows[0]['requests/s']:.2f}x; "
          f"p99 ratio: {rows[1]['p99 ms'] / rows[0]['p99 ms']:.2f}x; errors: {rows[0]['errors'] + rows[1]['errors']}")
    return 0 if rows[0]["errors"] + rows[1]["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
