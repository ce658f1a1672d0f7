#!/usr/bin/env python3
"""PyTorch -> safetensors conversion: safeckpt against its peers and the machine's copy limit,
measured in the same run.

usage: python convert_bench.py [--size-mib 1000] [--rounds 5] [--keep DIR] [--pth FILE]
needs: `cargo build --release -p safeckpt-cli -p safeckpt-benches` first (the script finds
target/release/ from its own location, or $CARGO_TARGET_DIR). torch (with safetensors and numpy)
makes the input and runs the torch rows; without torch, pass --pth with a file `torch.save`
wrote elsewhere: the torch rows are then left out and outputs are checked against safeckpt's
with safetensors' numpy loader (when installed).

A transformer-shaped f32 state dict (the same shapes as `safeckpt-bench`) is saved with
`torch.save`, then every converter runs in a fresh process, in interleaved rounds (the order
rotates each round). Every output is removed right after its run and `sync` run, so every run
starts in the same state: the input in the page cache, no output of any case, no dirty pages.
For each we report the time measured inside the process (open to output complete), the whole
process's wall time, and its peak anonymous memory (RssAnon polled every millisecond: heap and
other private memory, not mapped file pages). Nothing fsyncs (the peers cannot), so safeckpt
runs with --no-fsync. Every converter's output is checked once, in the warm-up round.

The "copy" rows are not converters but the machine's limit: a plain process copying the same
number of bytes as safeckpt writes from the input into a new file, with read+write through one
reused buffer (8 MiB and 256 KiB by default) and with copy_file_range (page cache to page cache,
in the kernel); the fastest of them is the limit the targets refer to.
"""
import argparse, json, os, statistics, struct, subprocess, sys, tempfile, textwrap, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
SAFECKPT = os.path.join(TARGET, "release", "safeckpt")
BENCH = os.path.join(TARGET, "release", "safeckpt-bench")

PY_LOAD = textwrap.dedent("""
    import sys, time, torch
    from safetensors.torch import save_file
    src, dst, mmap = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    t = time.perf_counter()
    sd = torch.load(src, weights_only=True, mmap=mmap)
    save_file(sd, dst)
    print(time.perf_counter() - t)
""")

OURS = "safeckpt convert (library call)"
LAZY = "pytorch-reader 0.22.1 lazy + safetensors serialize_to_file"


def have_torch():
    try:
        import torch, safetensors  # noqa: F401
        return True
    except ImportError:
        return False


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


def header(path):
    """The tensors of a safetensors file: name -> (dtype, shape, byte length)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: (v["dtype"], v["shape"], v["data_offsets"][1] - v["data_offsets"][0])
            for k, v in h.items() if k != "__metadata__"}


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


def same_tensors(src, out, reference, torch_ok):
    """Checks `out` against the input (with torch) or against safeckpt's output (numpy)."""
    if torch_ok:
        import torch
        from safetensors.torch import load_file
        a = torch.load(src, weights_only=True)
        b = load_file(out)
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    try:
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError:
        return header(out) == header(reference)
    a, b = load_file(reference), load_file(out)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", help="work directory to use and keep")
    ap.add_argument("--pth", help="an existing torch.save file to convert instead of making one")
    ap.add_argument("--piece-kib", type=int, nargs="+", default=[8192, 256],
                    help="buffer sizes of the read+write copies (one row each)")
    a = ap.parse_args()
    torch_ok = have_torch()
    work = a.keep or tempfile.mkdtemp(prefix="safeckpt-convert-bench-")
    os.makedirs(work, exist_ok=True)
    src = a.pth or os.path.join(work, "model.pth")
    if not a.pth:
        if not torch_ok:
            raise SystemExit("torch is not installed: pass --pth with a file torch.save wrote")
        if not os.path.exists(src):
            make_model(src, a.size_mib)
    out = lambda name: os.path.join(work, f"out-{name}.safetensors")
    # The reference output, and the byte count the copies move.
    reference = out("reference")
    run([BENCH, "convert", "safeckpt", src, reference])
    info = header(reference)
    n, total = len(info), sum(v[2] for v in info.values())
    largest = max(v[2] for v in info.values())
    copy_bytes = os.path.getsize(reference)
    cases = {}  # name -> (command, output file, is a converter)
    if torch_ok:
        cases["torch.load + safetensors save_file"] = ([sys.executable, "-c", PY_LOAD, src, out("torch"), "0"], out("torch"), True)
        cases["torch.load(mmap=True) + save_file"] = ([sys.executable, "-c", PY_LOAD, src, out("torch-mmap"), "1"], out("torch-mmap"), True)
    cases.update({
        "candle-core pickle::read_all + safetensors::save": ([BENCH, "convert", "candle", src, out("candle")], out("candle"), True),
        "pytorch-reader 0.22.1 eager + safetensors crate": ([BENCH, "convert", "pytorch-reader", src, out("pytorch-reader")], out("pytorch-reader"), True),
        LAZY: ([BENCH, "convert", "pytorch-reader-lazy", src, out("pytorch-reader-lazy")], out("pytorch-reader-lazy"), True),
        OURS: ([BENCH, "convert", "safeckpt", src, out("safeckpt-lib")], out("safeckpt-lib"), True),
        "safeckpt convert (CLI, whole process)": ([SAFECKPT, "convert", src, out("safeckpt"), "--force", "--no-fsync", "-q"], out("safeckpt"), True),
        **{f"copy, read+write {kib // 1024} MiB buffer" if kib >= 1024 else f"copy, read+write {kib} KiB buffer":
           ([BENCH, "copy", "read-write", str(copy_bytes), src, out(f"copy-rw-{kib}"), "--piece-kib", str(kib)], out(f"copy-rw-{kib}"), False)
           for kib in a.piece_kib},
        "copy, copy_file_range": ([BENCH, "copy", "copy-file-range", str(copy_bytes), src, out("copy-cfr")], out("copy-cfr"), False),
    })
    names = list(cases)
    results = {k: [] for k in names}
    def fresh(dst):
        """The same state before every run: the input cached, no output of any case, no dirty pages."""
        if os.path.exists(dst):
            os.remove(dst)
        subprocess.run(["sync"])

    for name in names:  # warm-up (page cache) and correctness
        cmd, dst, converter = cases[name]
        fresh(dst)
        run(cmd)
        if converter:
            assert same_tensors(src, dst, reference, torch_ok), name
        fresh(dst)
    fresh(reference)
    for r in range(a.rounds):
        for k in range(len(names)):
            name = names[(k + r) % len(names)]
            cmd, dst, _ = cases[name]
            fresh(dst)
            results[name].append(run(cmd))
            fresh(dst)
    versions = ""
    if torch_ok:
        import torch, safetensors
        versions = f"torch {torch.__version__}, safetensors {safetensors.__version__}; "
    print(f"# convert: {n} tensors, {total / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB; copies move "
          f"{copy_bytes} bytes; {versions}{a.rounds} rounds; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    for k in names:
        print(f"# {k}: whole process {[f'{x[0]:.3f}' for x in results[k]]}")
    inner = {k: statistics.median(x[1] for x in results[k]) for k in names}
    wall = {k: statistics.median(x[0] for x in results[k]) for k in names}
    print("\n| case | conversion (median) | whole process (median) | peak anon memory "
          "| time / safeckpt's (conversion) | time / safeckpt's (whole process) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in names:
        peak = max(x[2] for x in results[k])
        print(f"| {k} | {inner[k]:.3f} s | {wall[k]:.3f} s | {peak / 1024:.0f} MiB "
              f"| {inner[k] / inner[OURS]:.2f}x | {wall[k] / wall[OURS]:.2f}x |")
    copies = [k for k in names if not cases[k][2]]
    best = min(copies, key=lambda k: wall[k])
    bound = (1.2 * largest + 64 * 2**20) / 2**20
    print(f"\nsafeckpt vs the lazy peer: {inner[LAZY] / inner[OURS]:.2f}x faster (conversion), "
          f"{wall[LAZY] / wall[OURS]:.2f}x (whole process); target >= 1.3x")
    print(f"safeckpt vs the fastest copy ({best}): {wall[OURS] / wall[best]:.2f}x its time (whole process), "
          f"{inner[OURS] / inner[best]:.2f}x (in process); target <= 1.20x")
    print(f"memory bound for safeckpt: 1.2 x largest tensor + 64 MiB = {bound:.0f} MiB; "
          f"peak {max(x[2] for x in results[OURS]) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
