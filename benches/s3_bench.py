#!/usr/bin/env python3
"""Object storage: safeckpt against a plain single-stream S3 client, measured in the same run.

usage: python s3_bench.py [--size-mib 1000] [--rounds 5]
needs: boto3 in this interpreter, `s3s-fs` installed (cargo install s3s-fs@0.14.1 --locked
--features binary), and `cargo build --release -p safeckpt-benches` first.

Starts an S3-compatible server (s3s-fs) on loopback, writes a transformer-shaped f32 state dict
(the same shapes as `safeckpt-bench`) as a safetensors file, then in interleaved rounds:
  save: safeckpt's `upload_tensors` (multipart, parts in parallel) in a fresh process, timed from
        the model in memory to the object complete; against boto3 `put_object` of the same bytes
        (one request, one stream), timed around the call; and boto3 `upload_fileobj`, the transfer
        `aws s3 cp` runs (multipart, 8 MiB parts, 10 threads).
  load: safeckpt `RemoteSet::open` + `read_tensors` of every tensor (parallel ranged GETs) into
        memory; against boto3 `get_object(...).read()` of the whole object.
  one tensor: safeckpt opening the 1 GiB object and reading one 4 MiB tensor: bytes fetched.
"""
import argparse, io, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "safeckpt-bench")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
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
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                          region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required", retries={"max_attempts": 1}))
        times = {k: [] for k in ["safeckpt save", "boto3 put_object", "boto3 upload_fileobj", "safeckpt load",
                                 "boto3 get_object"]}
        tensor = None
        for r in range(args.rounds + 1):
            cases = ["safeckpt save", "boto3 put_object", "boto3 upload_fileobj", "safeckpt load", "boto3 get_object"]
            cases = cases[r % 2 * 3:] + cases[:r % 2 * 3]
            for case in cases:
                if case == "safeckpt save":
                    t = bench(env, "s3", "save", f"s3://{BUCKET}/safeckpt.safetensors", *size)["seconds"]
                elif case == "boto3 put_object":
                    t0 = time.perf_counter()
                    s3.put_object(Bucket=BUCKET, Key="boto3.safetensors", Body=data)
                    t = time.perf_counter() - t0
                elif case == "boto3 upload_fileobj":
                    t0 = time.perf_counter()
                    s3.upload_fileobj(io.BytesIO(data), BUCKET, "boto3-multipart.safetensors")
                    t = time.perf_counter() - t0
                elif case == "safeckpt load":
                    t = bench(env, "s3", "load", f"s3://{BUCKET}/boto3.safetensors")["seconds"]
                else:
                    t0 = time.perf_counter()
                    got = s3.get_object(Bucket=BUCKET, Key="safeckpt.safetensors")["Body"].read()
                    t = time.perf_counter() - t0
                    assert len(got) == len(data)
                    del got
                if r > 0:
                    times[case].append(t)
            if tensor is None:
                tensor = bench(env, "s3", "tensor", f"s3://{BUCKET}/safeckpt.safetensors", "--tensor",
                               "h.0.attn.c_proj.weight")
        # The two uploads hold the same bytes.
        a = os.path.join(root, BUCKET, "safeckpt.safetensors")
        b = os.path.join(root, BUCKET, "boto3.safetensors")
        c = os.path.join(root, BUCKET, "boto3-multipart.safetensors")
        assert os.path.getsize(a) == os.path.getsize(b) == os.path.getsize(c) == len(data)
        gib = len(data) / 2**30
        print(f"# s3 bench: {len(data) / 2**30:.2f} GiB safetensors file, {args.rounds} rounds, s3s-fs 0.14.1 on loopback, "
              f"boto3 {boto3.__version__}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
        print("| case | median | min | throughput |")
        print("|---|---:|---:|---:|")
        med = {}
        for k, v in times.items():
            med[k] = statistics.median(v)
            print(f"| {k} | {med[k]:.3f} s | {min(v):.3f} s | {gib / med[k]:.2f} GiB/s |")
        print()
        print(f"save: safeckpt is {med['boto3 put_object'] / med['safeckpt save']:.2f}x the single-stream upload")
        print(f"save: safeckpt is {med['boto3 upload_fileobj'] / med['safeckpt save']:.2f}x boto3's multipart transfer (aws s3 cp)")
        print(f"load: safeckpt is {med['boto3 get_object'] / med['safeckpt load']:.2f}x the single-stream download")
        print(f"one tensor of {tensor['tensor_bytes']} bytes from a {tensor['file_bytes']}-byte object: "
              f"{tensor['bytes_in']} bytes fetched in {tensor['gets']} GETs "
              f"({tensor['bytes_in'] / tensor['file_bytes'] * 100:.2f}% of the object), {tensor['seconds'] * 1000:.1f} ms")
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
