#!/usr/bin/env python3
"""PyTorch -> safetensors conversion: safeckpt against its peers, measured in the same run.

usage: python convert_bench.py [--size-mib 1000] [--rounds 5] [--keep DIR]
needs: torch, safetensors and numpy in this interpreter; `cargo build --release -p safeckpt-cli
-p safeckpt-benches` first (the script finds target/release/ from its own location).

A transformer-shaped f32 state dict (the same shapes as `safeckpt-bench`) is saved with
`torch.save`, then every converter runs in a fresh process, in interleaved rounds. For each we
report the conversion time measured inside the process (open to output complete), the whole
process's wall time, and its peak anonymous memory (RssAnon polled every millisecond: heap and
other private memory, not the mapped file pages). No converter fsyncs (the peers cannot), so
safeckpt runs with --no-fsync. Every output is checked against the input once.
"""
import argparse, os, statistics, subprocess, sys, tempfile, textwrap, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAFECKPT = os.path.join(ROOT, "target", "release", "safeckpt")
BENCH = os.path.join(ROOT, "target", "release", "safeckpt-bench")

PY_LOAD = textwrap.dedent("""
    import sys, time, torch
    from safetensors.torch import save_file
    src, dst, mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    t = time.perf_counter()
    sd = torch.load(src, weights_only=True, mmap=mmap)
    save_file(sd, dst)
    print(time.perf_counter() - t)
""")


def make_model(path, size_mib):
    import torch
    d, vocab = 1024, 32000
    g = torch.Generator().manual_seed(0)
    sd = {"wte.weight": torch.randn(vocab, d, generator=g), "wpe.weight": torch.randn(2048, d, generator=g)}
    used = 4 * (vocab * d + 2048 * d)
    per_layer = 4 * (d * 3 * d + d * d + 2 * d * 4 * d)
    i = 0
    while used + per_layer <= size_mib << 20 or i == 0:
        p = f"h.{i}."
        for n, s in [("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)), ("attn.c_attn.bias", (3 * d,)),
                     ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)), ("ln_2.weight", (d,)), ("ln_2.bias", (d,)),
                     ("mlp.c_fc.weight", (d, 4 * d)), ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))]:
            sd[p + n] = torch.randn(*s, generator=g) * 0.02
        used += per_layer
        i += 1
    torch.save(sd, path)
    largest = max(t.numel() * t.element_size() for t in sd.values())
    total = sum(t.numel() * t.element_size() for t in sd.values())
    return len(sd), total, largest


def run(cmd):
    """Runs cmd, polling its RssAnon; returns (wall seconds, printed seconds, peak anon KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    status = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
                        break
        except OSError:
            pass
        time.sleep(0.001)
    wall = time.perf_counter() - t0
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed: {err.decode()[-2000:]}")
    inner = float(out.decode().strip().splitlines()[-1]) if out.strip() else wall
    return wall, inner, peak


def same_tensors(src, out):
    import torch
    from safetensors.torch import load_file
    a = torch.load(src, weights_only=True)
    b = load_file(out)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep")
    a = ap.parse_args()
    import torch, safetensors
    work = a.keep or tempfile.mkdtemp(prefix="safeckpt-convert-bench-")
    src = os.path.join(work, "model.pth")
    n, total, largest = make_model(src, a.size_mib)
    out = lambda name: os.path.join(work, f"out-{name}.safetensors")
    cases = {  # name -> (command, output file or None)
        "torch.load + safetensors save_file": ([sys.executable, "-c", PY_LOAD, src, out("torch"), "0"], out("torch")),
        "torch.load(mmap=True) + save_file": ([sys.executable, "-c", PY_LOAD, src, out("torch-mmap"), "1"], out("torch-mmap")),
        "candle-core pickle::read_all + safetensors::save": ([BENCH, "convert", "candle", src, out("candle")], out("candle")),
        "pytorch-reader 0.22.1 + safetensors crate": ([BENCH, "convert", "pytorch-reader", src, out("pytorch-reader")], out("pytorch-reader")),
        "safeckpt convert (library call)": ([BENCH, "convert", "safeckpt", src, out("safeckpt-lib")], out("safeckpt-lib")),
        "safeckpt convert (CLI, whole process)": ([SAFECKPT, "convert", src, out("safeckpt"), "--force", "--no-fsync", "-q"], out("safeckpt")),
        "raw write_all of the same bytes": ([BENCH, "raw-write", str(total), out("raw")], None),
    }
    names = list(cases)
    results = {k: [] for k in names}
    for name in names:  # warm-up (page cache) and correctness
        cmd, dst = cases[name]
        run(cmd)
        if dst is not None:
            assert same_tensors(src, dst), name
    for r in range(a.rounds):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            cmd, dst = cases[name]
            for f in [dst or out("raw")]:
                if os.path.exists(f):
                    os.remove(f)
            subprocess.run(["sync"])
            results[name].append(run(cmd))
    print(f"# convert: {n} tensors, {total / 2**30:.2f} GiB f32, largest tensor {largest / 2**20:.0f} MiB; "
          f"torch {torch.__version__}, safetensors {safetensors.__version__}; {a.rounds} rounds; "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    base = {k: statistics.median(x[1] for x in results[k]) for k in names}
    ours = base["safeckpt convert (library call)"]
    print("\n| converter | conversion (median) | whole process (median) | peak anon memory | safeckpt is faster by |")
    print("|---|---:|---:|---:|---:|")
    for k in names:
        wall = statistics.median(x[0] for x in results[k])
        peak = max(x[2] for x in results[k])
        speed = "-" if k.startswith("safeckpt") else f"{base[k] / ours:.2f}x"
        print(f"| {k} | {base[k]:.3f} s | {wall:.3f} s | {peak / 1024:.0f} MiB | {speed} |")
    bound = (1.2 * largest + 64 * 2**20) / 2**20
    print(f"\nmemory bound for safeckpt: 1.2 x largest tensor + 64 MiB = {bound:.0f} MiB")


if __name__ == "__main__":
    main()
