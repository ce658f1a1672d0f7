#!/usr/bin/env python3
"""Object storage: safeckpt against boto3 at its best, measured in the same run.

usage: python s3_bench.py [--size-mib 1000] [--rounds 5]
       python s3_bench.py --sweep [--rounds 3]     # boto3's transfer settings, to pick its best
needs: boto3 in this interpreter, `s3s-fs` installed (cargo install s3s-fs@0.14.1 --locked
--features binary), and `cargo build --release -p safeckpt-benches` first (the binary is taken
from $CARGO_TARGET_DIR/release, else target/release; --bench PATH overrides).

Starts an S3-compatible server (s3s-fs) on loopback, writes a transformer-shaped f32 state dict
(the same shapes as `safeckpt-bench`) as a safetensors file, uploads it once as the object every
load reads, then in interleaved rounds (the order rotates each round, one warm-up round first):
  save: safeckpt's `upload_tensors` (multipart, parts in parallel) in a fresh process, timed from
        the model in memory to the object complete; against boto3 `put_object` of the same bytes
        (one request, one stream), boto3 `upload_fileobj` with its default transfer settings (the
        ones `aws s3 cp` uses: multipart, 8 MiB parts, 10 threads), and `upload_fileobj` with the
        settings given here (by default the best of a --sweep on the reference machine).
  load: safeckpt `RemoteSet::open` + `read_tensors` of every tensor (parallel ranged GETs) into
        memory; against boto3 `get_object(...).read()` of the whole object (one stream), and
        boto3 `download_fileobj` into a BytesIO (parallel ranged GETs written at their offsets,
        the whole object in memory as safeckpt's load leaves it), with default settings and with
        the settings given here. Every load reads the same object.
  one tensor: safeckpt opening the 1 GiB object and reading one 4 MiB tensor: bytes fetched.
"""
import argparse, io, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "safeckpt-bench")
KEY, SECRET, BUCKET = "bench", "bench-secret", "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3s_fs():
    for d in os.environ.get("PATH", "").split(os.pathsep) + [os.path.expanduser("~/.cargo/bin")]:
        p = os.path.join(d, "s3s-fs")
        if os.path.isfile(p):
            return p
    sys.exit("s3s-fs not found: cargo install s3s-fs@0.14.1 --locked --features binary")


def bench(env, *args):
    out = subprocess.run([BENCH, *args], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def transfer(chunk_mib, concurrency, io_kib=256):
    from boto3.s3.transfer import TransferConfig
    return TransferConfig(multipart_threshold=chunk_mib << 20, multipart_chunksize=chunk_mib << 20,
                          max_concurrency=concurrency, io_chunksize=io_kib << 10, use_threads=True)


def label(chunk_mib, concurrency, io_kib):
    return f"{chunk_mib} MiB parts, {concurrency} threads" + ("" if io_kib == 256 else f", {io_kib} KiB io chunks")


def interleave(rounds, cases):
    """Runs every case once as warm-up, then `rounds` rounds rotating the order; returns times."""
    names = list(cases)
    times = {k: [] for k in names}
    for r in range(rounds + 1):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = cases[name]()
            if r > 0:
                times[name].append(t)
            if os.environ.get("SAFECKPT_BENCH_VERBOSE"):
                print(f"round {r} {name}: {t:.3f} s", file=sys.stderr, flush=True)
    return times


def main():
    global BENCH
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bench", default=BENCH, help="the safeckpt-bench binary")
    ap.add_argument("--sweep", action="store_true", help="time boto3's transfer settings instead")
    # boto3's best settings (lowest median) in a --sweep on the reference machine, 2026-12-02
    # (docs/benchmarks.md); rerun the sweep on another machine and pass its best here.
    ap.add_argument("--upload-part-mib", type=int, default=64)
    ap.add_argument("--upload-threads", type=int, default=4)
    ap.add_argument("--download-part-mib", type=int, default=8)
    ap.add_argument("--download-threads", type=int, default=10)
    ap.add_argument("--download-io-kib", type=int, default=1024)
    args = ap.parse_args()
    BENCH = args.bench
    import boto3
    from botocore.config import Config

    work = tempfile.mkdtemp(prefix="safeckpt-s3-bench-")
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, BUCKET))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([s3s_fs(), "--host", "127.0.0.1", "--port", str(port), "--access-key", KEY,
                               "--secret-key", SECRET, root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        env = dict(os.environ, AWS_UNSIGNED_PAYLOAD=os.environ.get("AWS_UNSIGNED_PAYLOAD", "false"), AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
                   AWS_ENDPOINT_URL=endpoint)
        size = ["--size-mib", str(args.size_mib)]
        local = os.path.join(work, "model.safetensors")
        bench(env, "s3", "write-local", f"s3://{BUCKET}/unused", "--tensor", local, *size)
        with open(local, "rb") as f:
            data = f.read()
        os.remove(local)
        # A pool as large as the most threads any setting uses, so no setting is held back by it.
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                          region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required", retries={"max_attempts": 1},
                                        max_pool_connections=32))
        s3.put_object(Bucket=BUCKET, Key="load.safetensors", Body=data)
        gib = len(data) / 2**30

        def timed(f):
            t0 = time.perf_counter()
            f()
            return time.perf_counter() - t0

        def upload(key, config):
            return lambda: timed(lambda: s3.upload_fileobj(io.BytesIO(data), BUCKET, key, Config=config))

        def download(config):
            def run():
                buf = io.BytesIO()
                t = timed(lambda: s3.download_fileobj(BUCKET, "load.safetensors", buf, Config=config))
                assert buf.getbuffer().nbytes == len(data)
                return t
            return run

        def table(times):
            print("| case | median | min | throughput |")
            print("|---|---:|---:|---:|")
            med = {}
            for k, v in times.items():
                med[k] = statistics.median(v)
                print(f"| {k} | {med[k]:.3f} s | {min(v):.3f} s | {gib / med[k]:.2f} GiB/s |")
            return med

        header = (f"{gib:.2f} GiB safetensors file, {args.rounds} rounds, s3s-fs 0.14.1 on loopback, "
                  f"boto3 {boto3.__version__}, s3transfer {__import__('s3transfer').__version__}; "
                  f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
        if args.sweep:
            print(f"# s3 bench, boto3 transfer settings: {header}\n")
            grid = [(c, n, 256) for c in (8, 16, 32, 64) for n in (4, 10, 16)]
            cases = {f"upload_fileobj, {label(*g)}": upload(f"sweep-{i}.safetensors", transfer(*g))
                     for i, g in enumerate(grid)}
            up = table(interleave(args.rounds, cases))
            print()
            grid += [(c, n, io_kib) for c in (8, 32) for n in (10,) for io_kib in (1024, 4096)]
            cases = {f"download_fileobj to BytesIO, {label(*g)}": download(transfer(*g)) for g in grid}
            down = table(interleave(args.rounds, cases))
            print()
            print(f"best upload: {min(up, key=up.get)}; best download: {min(down, key=down.get)}")
            return

        default = (8, 10, 256)
        best_up = (args.upload_part_mib, args.upload_threads, 256)
        best_down = (args.download_part_mib, args.download_threads, args.download_io_kib)
        cases = {
            "safeckpt save": lambda: bench(env, "s3", "save", f"s3://{BUCKET}/safeckpt.safetensors", *size)["seconds"],
            "boto3 put_object": lambda: timed(lambda: s3.put_object(Bucket=BUCKET, Key="boto3.safetensors", Body=data)),
            f"boto3 upload_fileobj, defaults ({label(*default)})": upload("boto3-multipart.safetensors", transfer(*default)),
        }
        if best_up != default:
            cases[f"boto3 upload_fileobj, {label(*best_up)}"] = upload("boto3-tuned.safetensors", transfer(*best_up))

        def get_object():
            t0 = time.perf_counter()
            got = s3.get_object(Bucket=BUCKET, Key="load.safetensors")["Body"].read()
            t = time.perf_counter() - t0
            assert len(got) == len(data)
            return t

        cases["safeckpt load"] = lambda: bench(env, "s3", "load", f"s3://{BUCKET}/load.safetensors")["seconds"]
        cases["boto3 get_object"] = get_object
        cases[f"boto3 download_fileobj to BytesIO, defaults ({label(*default)})"] = download(transfer(*default))
        if best_down != default:
            cases[f"boto3 download_fileobj to BytesIO, {label(*best_down)}"] = download(transfer(*best_down))
        times = interleave(args.rounds, cases)
        tensor = bench(env, "s3", "tensor", f"s3://{BUCKET}/load.safetensors", "--tensor", "h.0.attn.c_proj.weight")
        # The uploads hold the same bytes.
        for key in os.listdir(os.path.join(root, BUCKET)):
            if key.endswith(".safetensors"):
                assert os.path.getsize(os.path.join(root, BUCKET, key)) == len(data), key
        print(f"# s3 bench: {header}\n")
        med = table(times)
        print()
        for k in med:
            if k.startswith("boto3") and k != "boto3 get_object" and "download" not in k:
                print(f"save: safeckpt is {med[k] / med['safeckpt save']:.2f}x {k}")
        for k in med:
            if k == "boto3 get_object" or "download" in k:
                print(f"load: safeckpt is {med[k] / med['safeckpt load']:.2f}x {k}")
        print(f"one tensor of {tensor['tensor_bytes']} bytes from a {tensor['file_bytes']}-byte object: "
              f"{tensor['bytes_in']} bytes fetched in {tensor['gets']} GETs "
              f"({tensor['bytes_in'] / tensor['file_bytes'] * 100:.2f}% of the object), {tensor['seconds'] * 1000:.1f} ms")
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
