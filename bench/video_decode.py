"""Frames per second of the course's video reader against a plain PyAV decode loop, on the same mp4 files.

Run: python bench/video_decode.py [--clips 40 --frames 32 --size 64 --sample 8 --repeats 5]
The files are the course's moving-shapes clips (H.264, a keyframe every 4 frames). Two tasks:
every frame of each clip, and 8 frames sampled uniformly from each clip. The plain loop decodes and converts
every frame (`[f.to_ndarray(format="rgb24") for f in container.decode(video=0)]`) and keeps the ones asked for;
the course's `read_clip` decodes only what the asked-for frames need. Prints frames per second, the ratios (goal:
reading every frame within 1.2x of the plain loop, sampling faster than it), and checks both return the same pixels.
"""
import argparse
import statistics
import time

import av
import numpy as np
import torch

from mmlab.data.preprocess import sample_frame_indices
from mmlab.video import make_moving_shapes, read_clip


def plain_pyav(path, indices=None):
    "The loop everyone writes first: decode every frame, convert it, keep the ones asked for."
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(frames if indices is None else [frames[i] for i in indices])


def rounds(fns, paths, repeats):
    "Median seconds (wall and CPU) of each reader over all files, the readers interleaved round by round."
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for name, fn in fns.items(): [fn(p) for p in paths[:3]]                    # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for p in paths: fn(p)
            wall[name].append(time.perf_counter() - w0); cpu[name].append(time.process_time() - c0)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=40); p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", type=int, default=64); p.add_argument("--sample", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = make_moving_shapes(a.clips, num_frames=a.frames, size=a.size, seed=1, audio=False)
    paths = ds["video"]
    idx = sample_frame_indices(a.frames, a.sample)
    for path in paths[:5]:                                                       # same pixels from both readers
        assert np.array_equal(read_clip(path).permute(0, 2, 3, 1).numpy(), plain_pyav(path))
        assert np.array_equal(read_clip(path, a.sample).permute(0, 2, 3, 1).numpy(), plain_pyav(path, idx))
    fns = {"plain, every frame": plain_pyav, "course, every frame": read_clip,
           f"plain, {a.sample} of {a.frames}": lambda q: plain_pyav(q, idx),
           f"course, {a.sample} of {a.frames}": lambda q: read_clip(q, a.sample)}
    wall, cpu = rounds(fns, paths, a.repeats)
    print(f"{a.clips} clips of {a.frames} frames at {a.size}x{a.size} (H.264, keyframe every 4), median of {a.repeats}; "
          f"PyAV {av.__version__}")
    print(f"{'reader':24s} {'frames/s (wall)':>16s} {'frames/s (CPU)':>15s}")
    for name in fns:
        n = a.clips * (a.frames if "every" in name else a.sample)
        print(f"{name:24s} {n / wall[name]:16.0f} {n / cpu[name]:15.0f}")
    full = wall["course, every frame"] / wall["plain, every frame"]
    sampled = wall[f"plain, {a.sample} of {a.frames}"] / wall[f"course, {a.sample} of {a.frames}"]
    full_cpu = cpu["course, every frame"] / cpu["plain, every frame"]
    sampled_cpu = cpu[f"plain, {a.sample} of {a.frames}"] / cpu[f"course, {a.sample} of {a.frames}"]
    print(f"every frame: course time / plain time = {full:.2f} (CPU {full_cpu:.2f}; goal <= 1.2)")
    print(f"{a.sample} of {a.frames}: speed-up of the course's reader = {sampled:.2f}x (CPU {sampled_cpu:.2f}x; goal > 1)")


if __name__ == "__main__":
    main()
