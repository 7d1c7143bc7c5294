"""Upload + validation throughput of a large CSV through the real
UploadDatasetVersion RPC, against a raw S3 put of the same bytes to the same
endpoint, measured side by side in one run; and the dataset service's peak RSS.

    python -m bench upload                 # 1 GiB CSV (default)
    python -m bench upload --size-mb=64    # a quick run (the harness needs the = form)

The S3 endpoint is real MinIO when MINIO_ENDPOINT is set, else moto's server
started as a separate process (`moto_server`). The dataset service is a real
process (the same start-up path as `textft up`); its peak RSS is VmHWM from
/proc/<pid>/status, read after the upload, and the bench also samples
/proc/<pid>/smaps_rollup during it to say how much of the peak is anonymous
memory (heap, buffers) and how much file-backed (shared libraries' pages,
which vary with the page cache: compare runs with one venv). Rounds alternate the
two sides (A B, B A, ...) and the figures are medians; the ratio is the median
of the rounds' ratios. Goals (issue 3): ratio >= 0.5,
service peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

GOAL_RATIO = 0.5
GOAL_RSS_MB = 300
WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actor",
    "scene",
    "great",
    "terrible",
    "boring",
    "slow",
    "fast",
    "story",
    "ending",
    "music",
    "camera",
    "light",
    "dark",
    "funny",
    "sad",
    "long",
    "short",
    "brilliant",
    "awful",
    "wonderful",
    "cast",
    "script",
    "dialogue",
    "twist",
    "character",
    "moment",
    "minute",
    "hour",
    "watch",
    "again",
    "never",
    "always",
    "perhaps",
    "really",
    "quite",
    "rather",
    "very",
    "somewhat",
    "director",
    "producer",
    "sound",
    "effect",
]
LABELS = ("positive", "negative", "neutral", "mixed")


def generate_csv(path: Path, size_bytes: int, row_bytes: int) -> int:
    """Writes a classification CSV of about size_bytes with unique rows of
    about row_bytes each (text, label, id); returns the number of rows."""
    # A pool of phrases of varied length; rows combine two of them with a
    # unique prefix, so no row is a duplicate and lengths vary.
    pool = []
    for i in range(997):
        n = 5 + (i * 7919) % max(6, row_bytes // 4)
        pool.append(" ".join(WORDS[(i * 31 + j * 17) % len(WORDS)] for j in range(n)))
    rows = 0
    written = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("text,label,id\n")
        while written < size_bytes:
            block = []
            for _ in range(2000):
                a, b = pool[rows % 997], pool[(rows * 13 + 5) % 997]
                text = f"review {rows}: {a}, {b}"[: row_bytes * 2]
                line = f'"{text}",{LABELS[rows % 4]},r{rows}\n'
                block.append(line)
                rows += 1
            data = "".join(block)
            out.write(data)
            written += len(data)
    return rows


def _start_moto(port: int) -> subprocess.Popen[str]:
    binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # werkzeug announces the address once it listens
        if "Running on" in line:
            break
    else:
        raise RuntimeError(f"moto_server exited with code {proc.wait()} before it listened")
    # Keep draining its log so a full pipe never blocks it.
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure (VmHWM, VmRSS) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class _RssSampler:
    """Polls the service's /proc/<pid>/smaps_rollup while the upload runs and
    keeps the sample with the most RSS: where the peak is (anonymous memory,
    the heap and thread stacks, against file-backed pages such as shared
    libraries) and when, which VmHWM alone does not say."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import threading

        self.pid, self.interval_s = pid, interval_s
        self.peak: dict[str, int] = {"Rss": 0}
        self.peak_at = 0.0
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, int]:
        figures = {}
        for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":", 1)
            figures[name] = int(value.split()[0]) * 1024
        figures["Threads"] = int(_vm(self.pid, "Threads") // 1024)
        return figures

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sample = self._sample()
            except (OSError, ValueError, KeyError):
                return
            if sample["Rss"] > self.peak["Rss"]:
                self.peak, self.peak_at = sample, time.perf_counter() - self._start

    def stop(self, sample: bool = False) -> dict[str, Any]:
        """The peak's figures (with sample: the current ones)."""
        self._stop.set()
        self._thread.join()
        peak = self._sample() if sample else self.peak
        return {
            "rss_mb": round(peak["Rss"] / 1e6, 1),
            "anon_mb": round(peak.get("Anonymous", 0) / 1e6, 1),
            "file_mb": round((peak["Rss"] - peak.get("Anonymous", 0)) / 1e6, 1),
            "threads": peak.get("Threads", 0),
            "at_s": round(self.peak_at, 1),
        }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench upload", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="CSV size in MiB (default 1024)")
    parser.add_argument("--row-bytes", type=int, default=500, help="typical row size in bytes (default 500)")
    parser.add_argument("--workdir", default="", help="where to write the CSV (default: a temp dir)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    parser.add_argument("--profile", default="", help="record the service with py-spy into this file (.svg/.txt)")
    parser.add_argument("--profile-gil", action="store_true", help="with --profile: only the thread holding the GIL")
    args = parser.parse_args(argv)

    from minio import Minio

    from textft import Client
    from textft_services.common.config import Settings
    from textft_services.common.store import PART_SIZE, S3Store
    from textft_services.stack import _free_port, start_service

    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.workdir or None))
    moto = None
    service = None
    try:
        if os.environ.get("MINIO_ENDPOINT"):
            endpoint = os.environ["MINIO_ENDPOINT"]
            access = os.environ.get("MINIO_ACCESS_KEY", "minioadmin")
            secret = os.environ.get("MINIO_SECRET_KEY", "minioadmin")
            kind = "minio"
        else:
            port = _free_port()
            moto = _start_moto(port)
            endpoint, access, secret, kind = f"127.0.0.1:{port}", "bench", "bench-secret", "moto_server"
        bucket = "bench-" + uuid.uuid4().hex[:10]
        api_key = "tft_bench_" + secrets.token_hex(16)  # keys are at least 32 characters
        env = {
            **os.environ,
            "TEXTFT_HOME": str(work / "home"),
            "TEXTFT_STORE": "s3",
            "MINIO_ENDPOINT": endpoint,
            "MINIO_ACCESS_KEY": access,
            "MINIO_SECRET_KEY": secret,
            "MINIO_REGION": "us-east-1",
            "TEXTFT_BUCKET": bucket,
            "TEXTFT_API_KEYS": api_key,
            "TEXTFT_API_KEY": api_key,
            "TEXTFT_MAX_UPLOAD_BYTES": str(max(2 * 1024**3, (args.size_mb + 64) * 1024**2)),
            "TEXTFT_LOG_LEVEL": os.environ.get("TEXTFT_LOG_LEVEL", "WARNING"),
        }
        store = S3Store(Settings.from_env(env).store)  # creates the bucket
        raw = Minio(endpoint, access_key=access, secret_key=secret, secure=False, region="us-east-1")

        csv_path = work / "bench.csv"
        t = time.perf_counter()
        rows = generate_csv(csv_path, args.size_mb * 1024**2, args.row_bytes)
        size = csv_path.stat().st_size
        print(f"generated {size / 1024**2:.0f} MiB, {rows} rows in {time.perf_counter() - t:.1f}s ({kind})", flush=True)

        s3_pid = moto.pid if moto is not None else 0

        def raw_put() -> tuple[float, tuple[float, float]]:
            """The same bytes as one multipart put at the store's part size: what a user's script would do."""
            cpu = (time.process_time(), _cpu_s(s3_pid) if s3_pid else 0.0)
            t = time.perf_counter()
            raw.fput_object(bucket, "raw/bench.csv", str(csv_path), part_size=PART_SIZE)
            seconds = time.perf_counter() - t
            used = (time.process_time() - cpu[0], (_cpu_s(s3_pid) - cpu[1]) if s3_pid else 0.0)
            raw.remove_object(bucket, "raw/bench.csv")
            print(f"raw S3 put: {seconds:.1f}s", flush=True)
            return seconds, used

        # The same bytes through the dataset service's UploadDatasetVersion.
        service = start_service("dataset", env)
        pid = service.proc.pid
        idle_rss = _vm(pid, "VmRSS")
        idle = _RssSampler(pid).stop(sample=True)
        profiler = None
        if args.profile:
            fmt = "raw" if args.profile.endswith(".txt") else "flamegraph"
            spy = shutil.which("py-spy") or "py-spy"
            cmd = [spy, "record", "-p", str(pid), "-o", args.profile, "-f", fmt, "-r", "50", "--threads"] + (
                ["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []
            )
            profiler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        samples: list[dict[str, Any]] = []

        def rpc_upload(client: Any, round_: int) -> tuple[float, tuple[float, float, float]]:
            dataset = f"bench-{round_}"
            client.create_dataset(dataset)
            sampler = _RssSampler(pid)
            cpu = (time.process_time(), _cpu_s(s3_pid) if s3_pid else 0.0, _cpu_s(pid))
            t = time.perf_counter()
            version = client.upload_dataset(dataset, csv_path, format="csv", timeout=3600)
            seconds = time.perf_counter() - t
            used = (
                time.process_time() - cpu[0],
                (_cpu_s(s3_pid) - cpu[1]) if s3_pid else 0.0,
                _cpu_s(pid) - cpu[2],
            )
            samples.append(sampler.stop())
            assert version.stats.row_count == rows and version.stats.valid_row_count == rows, version.stats
            assert version.source_size_bytes == size
            deleted = store.delete_prefix(f"datasets/{dataset}/")
            print(f"UploadDatasetVersion: {seconds:.1f}s ({deleted} objects deleted afterwards)", flush=True)
            return seconds, used

        # Rounds interleaved A B, B A, ...: drift in the machine's load (and the S3
        # server's own speed, which moves a lot on a shared machine) hits both sides.
        raws: list[tuple[float, tuple[float, float]]] = []
        rpcs: list[tuple[float, tuple[float, float, float]]] = []
        with Client(service.address, api_key=api_key) as client:
            for round_ in range(args.rounds):
                if round_ % 2 == 0:
                    raws.append(raw_put())
                    rpcs.append(rpc_upload(client, round_))
                else:
                    rpcs.append(rpc_upload(client, round_))
                    raws.append(raw_put())
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            profiler.wait(60)
        peak = _vm(pid, "VmHWM")
        at_peak = max(samples, key=lambda s: s["rss_mb"])
        ratios = [r[0] / u[0] for r, u in zip(raws, rpcs, strict=True)]
        raw_s = statistics.median(r[0] for r in raws)
        rpc_s = statistics.median(u[0] for u in rpcs)
        raw_cpu = tuple(statistics.median(r[1][i] for r in raws) for i in range(2))
        rpc_cpu = tuple(statistics.median(u[1][i] for u in rpcs) for i in range(3))

        ratio = statistics.median(ratios)  # the median of the rounds' ratios
        mib = size / 1024**2
        figures: dict[str, Any] = {
            "endpoint": kind,
            "size_mib": round(mib, 1),
            "rows": rows,
            "raw_put_s": round(raw_s, 2),
            "raw_put_mib_s": round(mib / raw_s, 1),
            "upload_rpc_s": round(rpc_s, 2),
            "upload_rpc_mib_s": round(mib / rpc_s, 1),
            "upload_rows_per_s": round(rows / rpc_s),
            "ratio_rpc_vs_raw": round(ratio, 3),
            "rounds": args.rounds,
            "round_ratios": [round(r, 3) for r in ratios],
            "round_seconds": [
                {"raw_put": round(r[0], 2), "rpc": round(u[0], 2)} for r, u in zip(raws, rpcs, strict=True)
            ],
            "ratio_goal": GOAL_RATIO,
            "raw_cpu_s": {"client": round(raw_cpu[0], 1), "s3": round(raw_cpu[1], 1)},
            "rpc_cpu_s": {"client": round(rpc_cpu[0], 1), "s3": round(rpc_cpu[1], 1), "service": round(rpc_cpu[2], 1)},
            "service_idle_rss_mb": round(idle_rss / 1e6, 1),
            "service_peak_rss_mb": round(peak / 1e6, 1),
            "rss_goal_mb": GOAL_RSS_MB,
            "service_idle": idle,
            "service_at_peak": at_peak,
        }
        print()
        print(f"{'figure':<34}{'value':>14}")
        print(f"{'CSV size (MiB) / rows':<34}{f'{mib:.0f} / {rows}':>14}")
        print(f"{'rounds (median of each figure)':<34}{args.rounds:>14}")
        print(f"{'raw S3 put (s, MiB/s)':<34}{f'{raw_s:.1f}, {mib / raw_s:.0f}':>14}")
        print(f"{'UploadDatasetVersion (s, MiB/s)':<34}{f'{rpc_s:.1f}, {mib / rpc_s:.0f}':>14}")
        print(f"{'rows validated per s':<34}{rows / rpc_s:>14.0f}")
        if s3_pid:  # where the CPU went (2 cores here): client / S3 server / dataset service
            shown = f"{raw_cpu[0]:.0f}/{raw_cpu[1]:.0f}/-"
            print(f"{'CPU s raw put: client/S3/service':<34}{shown:>14}")
            shown = f"{rpc_cpu[0]:.0f}/{rpc_cpu[1]:.0f}/{rpc_cpu[2]:.0f}"
            print(f"{'CPU s RPC: client/S3/service':<34}{shown:>14}")
        verdict = "ok" if ratio >= GOAL_RATIO else "MISSED"
        print(f"{'ratio RPC / raw, each round':<34}{' '.join(f'{r:.2f}' for r in ratios):>14}")
        print(f"{'ratio RPC / raw (goal >= 0.5)':<34}{f'{ratio:.2f} {verdict}':>14}")
        verdict = "ok" if peak / 1e6 < GOAL_RSS_MB else "MISSED"
        print(f"{'service peak RSS MB (goal < 300)':<34}{f'{peak / 1e6:.0f} {verdict}':>14}")
        shown = f"{idle['anon_mb']:.0f}/{idle['file_mb']:.0f}"
        print(f"{'idle: anon/file MB':<34}{shown:>14}")
        shown = f"{at_peak['anon_mb']:.0f}/{at_peak['file_mb']:.0f}, {at_peak['at_s']:.0f}"
        print(f"{'at peak: anon/file MB, at s':<34}{shown:>14}")
        return figures
    finally:
        if service is not None:
            service.stop()
        if moto is not None:
            moto.terminate()
            moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
