//! Against a real S3-compatible server on loopback: header-only opens, round trips, multipart
//! uploads, region reads, interrupted and failed uploads, multi-rank saves.

mod common;

use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use safeckpt_format::{Dtype, RawTensor};
use safeckpt_reader::{Reader, chunk_range};
use safeckpt_store::{RemoteSet, StoreOptions, exists, upload_tensors};
use safeckpt_writer::WriteOptions;
use safeckpt_writer::rank::RankTensor;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32 % 31) as u8 ^ seed).collect()
}

fn small_opts() -> StoreOptions {
    StoreOptions { part_size: 5 << 20, concurrency: 4, max_retries: 2, ..Default::default() }
}

#[test]
fn open_reads_only_the_header_and_files_round_trip() {
    let Some(server) = Server::start() else { return };
    let loc = server.location("run/model.safetensors", StoreOptions::default());
    let a = bytes(4000, 1);
    let b = bytes(64 * 1024, 2);
    let tensors = vec![
        ("a", RawTensor::borrowed(Dtype::F32, vec![1000], &a)),
        ("b", RawTensor::borrowed(Dtype::U8, vec![256, 256], &b)),
    ];
    let summary = upload_tensors(&loc, &tensors, None, &WriteOptions::new(), &|_| {}).unwrap();
    // The object is byte for byte what the local writer writes.
    let local = tempfile::tempdir().unwrap();
    let p = local.path().join("m.safetensors");
    safeckpt_writer::write_file(&p, &tensors, None, &WriteOptions::new().fsync(false)).unwrap();
    assert_eq!(std::fs::read(server.file_of("run/model.safetensors")).unwrap(), std::fs::read(&p).unwrap());
    assert_eq!(summary.bytes, std::fs::metadata(&p).unwrap().len());

    let fresh = server.location("run/model.safetensors", StoreOptions::default());
    let set = RemoteSet::open(&fresh).unwrap();
    let header_len = set.shards()[0].header().data_start() as u64;
    let s = fresh.store.stats();
    assert_eq!((s.gets, s.bytes_in), (2, header_len), "the prefix and the header, nothing else");
    let got = set.read_tensors(&["b", "a"]).unwrap();
    assert_eq!((got[0].as_ref(), got[1].as_ref()), (b.as_slice(), a.as_slice()));
    // A region: 3 rows of `b` cost 3 rows.
    let before = fresh.store.stats().bytes_in;
    let rows = set.read_region("b", &[10..13, 0..256]).unwrap();
    assert_eq!(rows, &b[10 * 256..13 * 256]);
    assert_eq!(fresh.store.stats().bytes_in - before, 3 * 256);
    let reports = set.verify().unwrap();
    assert!(reports[0].is_ok() && reports[0].has_checksums);
    // Refuses to overwrite unless asked.
    let err = upload_tensors(&loc, &tensors, None, &WriteOptions::new().overwrite(false), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // Objects that are not safetensors files are refused by name.
    let tiny = server.location("run/tiny.safetensors", StoreOptions::default());
    safeckpt_store::put_bytes(&tiny, vec![1, 2, 3]).unwrap();
    let err = RemoteSet::open(&tiny).unwrap_err();
    assert!(err.is_bad_input() && err.to_string().contains("tiny.safetensors"), "{err}");
    let lying = server.location("run/lying.safetensors", StoreOptions::default());
    safeckpt_store::put_bytes(&lying, [&u64::MAX.to_le_bytes()[..], b"{}"].concat()).unwrap();
    let err = RemoteSet::open(&lying).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    // A missing object names itself.
    let err = RemoteSet::open(&server.location("run/none.safetensors", StoreOptions::default())).unwrap_err();
    assert!(err.is_not_found() && err.to_string().contains("s3://ckpt/run/none.safetensors"), "{err}");
}

#[test]
fn multipart_uploads_and_parallel_ranged_reads() {
    let Some(server) = Server::start() else { return };
    let loc = server.location("big.safetensors", small_opts());
    let w = bytes(18 << 20, 3);
    let v = bytes(3 << 20, 4);
    let tensors = vec![
        ("w", RawTensor::borrowed(Dtype::F32, vec![4608, 1024], &w)),
        ("v", RawTensor::borrowed(Dtype::BF16, vec![1536, 1024], &v)),
    ];
    upload_tensors(&loc, &tensors, None, &WriteOptions::new(), &|_| {}).unwrap();
    let puts = loc.store.stats().puts;
    assert!(puts >= 4, "{puts} parts");
    let set = RemoteSet::open(&server.location("big.safetensors", small_opts())).unwrap();
    let got = set.read_tensors(&["w", "v"]).unwrap();
    assert!(got[0].as_ref() == w.as_slice() && got[1].as_ref() == v.as_slice());
    // Columns 100..200 of every row of `w`: strided runs, coalesced into few requests.
    let region = [0..4608, 100..200];
    let cols = set.read_region("w", &region).unwrap();
    let expected: Vec<u8> = (0..4608).flat_map(|r| w[r * 4096 + 400..r * 4096 + 800].to_vec()).collect();
    assert_eq!(cols, expected);
    // Download to disk and read locally.
    let dir = tempfile::tempdir().unwrap();
    let local = set.download(dir.path()).unwrap();
    let r = Reader::open(&local).unwrap();
    assert!(r.verify().unwrap().is_ok());
    assert_eq!(r.tensor("w").unwrap().data(), w.as_slice());
}

/// Uploads 96 MiB slowly enough to be killed in the middle; prints `started` after the first
/// parts. Run by `a_killed_upload_leaves_nothing_visible`.
#[test]
#[ignore = "a child of a_killed_upload_leaves_nothing_visible"]
fn upload_child() {
    let port: u16 = std::env::var("SAFECKPT_TEST_S3_PORT").unwrap().parse().unwrap();
    let server = Server::attach(port);
    let loc = server.location("victim.safetensors", StoreOptions { concurrency: 1, ..small_opts() });
    let data = bytes(96 << 20, 9);
    let tensors = vec![("w", RawTensor::borrowed(Dtype::U8, vec![data.len()], &data))];
    let said = std::sync::atomic::AtomicBool::new(false);
    let progress = |_| {
        if !said.swap(true, std::sync::atomic::Ordering::SeqCst) {
            println!("started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    upload_tensors(&loc, &tensors, None, &WriteOptions::new().overwrite(true), &progress).unwrap();
    println!("finished");
}

#[test]
fn a_killed_upload_leaves_nothing_visible() {
    let Some(server) = Server::start() else { return };
    // A previous version exists.
    let loc = server.location("victim.safetensors", small_opts());
    let old = bytes(1000, 5);
    let tensors = vec![("w", RawTensor::borrowed(Dtype::U8, vec![1000], &old))];
    upload_tensors(&loc, &tensors, None, &WriteOptions::new(), &|_| {}).unwrap();
    let before = std::fs::read(server.file_of("victim.safetensors")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "upload_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SAFECKPT_TEST_S3_PORT", server.port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child ended before starting").unwrap();
        if line.contains("started") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!lines.any(|l| l.is_ok_and(|l| l.contains("finished"))), "the upload finished before the kill");
    assert_eq!(std::fs::read(server.file_of("victim.safetensors")).unwrap(), before, "the previous object is intact");
    let set = RemoteSet::open(&server.location("victim.safetensors", StoreOptions::default())).unwrap();
    assert_eq!(set.read_tensors(&["w"]).unwrap()[0].as_ref(), old.as_slice());
}

#[test]
fn a_failed_upload_leaves_the_previous_object() {
    let Some(mut server) = Server::start() else { return };
    let loc = server.location("m.safetensors", StoreOptions { max_retries: 0, concurrency: 1, ..small_opts() });
    let old = bytes(100, 6);
    upload_tensors(
        &loc,
        &[("x", RawTensor::borrowed(Dtype::U8, vec![100], &old))],
        None,
        &WriteOptions::new(),
        &|_| {},
    )
    .unwrap();
    let before = std::fs::read(server.file_of("m.safetensors")).unwrap();
    // The store goes away in the middle of a 40 MiB upload.
    let data = bytes(40 << 20, 7);
    let tensors = vec![("x", RawTensor::borrowed(Dtype::U8, vec![data.len()], &data))];
    let err = {
        let server_ref = std::sync::Mutex::new(&mut server);
        let stopped = std::sync::atomic::AtomicBool::new(false);
        let progress = |_| {
            if !stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
                server_ref.lock().unwrap().stop();
            }
        };
        upload_tensors(&loc, &tensors, None, &WriteOptions::new().overwrite(true), &progress).unwrap_err()
    };
    assert!(err.to_string().contains("s3://ckpt/m.safetensors"), "{err}");
    server.restart();
    assert_eq!(std::fs::read(server.file_of("m.safetensors")).unwrap(), before);
    assert!(exists(&server.location("m.safetensors", StoreOptions::default())).unwrap());
}

const WORLD: usize = 4;

fn global(name: &str, rows: usize, cols: usize) -> Vec<u8> {
    bytes(rows * cols * 4, name.len() as u8 * 17)
}

/// Rank `SAFECKPT_TEST_RANK` saves its rows of `w` (40x32 f32) and its columns of `p` (8x20
/// f32); rank 0 also saves `b` whole and commits.
#[test]
#[ignore = "a child of four_ranks_save_to_s3_and_fewer_ranks_load"]
fn rank_child() {
    let rank: usize = std::env::var("SAFECKPT_TEST_RANK").unwrap().parse().unwrap();
    let port: u16 = std::env::var("SAFECKPT_TEST_S3_PORT").unwrap().parse().unwrap();
    let server = Server::attach(port);
    let dir = server.location("step-9", StoreOptions::default());
    let w = global("w", 40, 32);
    let rows = chunk_range(40, rank, WORLD);
    let mine_w = w[rows.start * 128..rows.end * 128].to_vec();
    let p = global("p", 8, 20);
    let cols = chunk_range(20, rank, WORLD);
    let mine_p: Vec<u8> = (0..8).flat_map(|r| p[r * 80 + cols.start * 4..r * 80 + cols.end * 4].to_vec()).collect();
    let mut tensors = vec![
        RankTensor::piece(
            "w",
            RawTensor::owned(Dtype::F32, vec![rows.len(), 32], mine_w),
            vec![40, 32],
            vec![rows.start, 0],
        ),
        RankTensor::piece(
            "p",
            RawTensor::owned(Dtype::F32, vec![8, cols.len()], mine_p),
            vec![8, 20],
            vec![0, cols.start],
        ),
    ];
    if rank == 0 {
        tensors.push(RankTensor::whole("b", RawTensor::owned(Dtype::F32, vec![32], global("b", 1, 32))));
    }
    safeckpt_store::save_rank_to(&dir, "model", rank, WORLD, "9", &tensors, None, &WriteOptions::new()).unwrap();
    if rank == 0 {
        safeckpt_store::commit_ranks_to(&dir, "model", WORLD, "9", Duration::from_secs(60)).unwrap();
    }
}

#[test]
fn four_ranks_save_to_s3_and_fewer_ranks_load() {
    let Some(server) = Server::start() else { return };
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORLD)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "rank_child", "--ignored", "--nocapture", "--test-threads=1"])
                .env("SAFECKPT_TEST_RANK", rank.to_string())
                .env("SAFECKPT_TEST_S3_PORT", server.port.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut names: Vec<String> = std::fs::read_dir(server.file_of("step-9"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names.len(), WORLD + 1, "{names:?}: shards and the index, no markers");
    let index = server.location("step-9/model.safetensors.index.json", StoreOptions::default());
    let set = RemoteSet::open(&index).unwrap();
    assert_eq!(set.global_names(), ["b", "p", "w"]);
    let (w, p) = (global("w", 40, 32), global("p", 8, 20));
    for world in [2, 1] {
        let mut all_w = Vec::new();
        for rank in 0..world {
            let rows = chunk_range(40, rank, world);
            let part = set.read_region("w", &[rows.clone(), 0..32]).unwrap();
            assert_eq!(part, &w[rows.start * 128..rows.end * 128]);
            all_w.extend(part);
            let cols: Range<usize> = chunk_range(20, rank, world);
            let part = set.read_region("p", &[0..8, cols.clone()]).unwrap();
            let want: Vec<u8> =
                (0..8).flat_map(|r| p[r * 80 + cols.start * 4..r * 80 + cols.end * 4].to_vec()).collect();
            assert_eq!(part, want);
        }
        assert_eq!(all_w, w);
    }
    assert_eq!(set.read_global("b").unwrap(), global("b", 1, 32));
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok() && r.has_checksums));
}

#[test]
fn transient_outages_are_retried() {
    let Some(mut server) = Server::start() else { return };
    let loc = server.location("retry.safetensors", StoreOptions { max_retries: 10, ..StoreOptions::default() });
    let data = bytes(1 << 20, 8);
    server.stop();
    let restart = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        server.restart();
        server
    });
    let tensors = vec![("x", RawTensor::borrowed(Dtype::U8, vec![data.len()], &data))];
    upload_tensors(&loc, &tensors, None, &WriteOptions::new(), &|_| {}).expect("retried until the store came back");
    let server = restart.join().unwrap();
    let set = RemoteSet::open(&server.location("retry.safetensors", StoreOptions::default())).unwrap();
    assert_eq!(set.read_tensors(&["x"]).unwrap()[0].as_ref(), data.as_slice());
}

#[test]
fn a_prefix_lease_over_s3_conditional_writes() {
    use safeckpt_store::{LEASE_NAME, Lease, StoreError, put_bytes};
    let Some(server) = Server::start() else { return };
    let ttl = Duration::from_millis(1500);
    let p = server.location("runs/leased", StoreOptions::default());
    let a = Lease::acquire(&p, "writer A", ttl).unwrap();
    match Lease::acquire(&server.location("runs/leased", StoreOptions::default()), "writer B", ttl) {
        Err(StoreError::Locked { holder, .. }) => assert_eq!(holder, "writer A"),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Renewals (If-Match on the last ETag) go through: still valid after several lifetimes.
    std::thread::sleep(ttl * 2);
    a.check().unwrap();
    a.release().unwrap();
    assert!(!server.file_of("runs/leased/.lock").exists());
    // A holder that died: taken over once it has gone unrenewed for a whole time-to-live.
    put_bytes(
        &p.join(LEASE_NAME),
        br#"{"holder":"pid 1 on gone","token":"0","ttl_ms":1500,"renewal":0,"written_unix_ms":0}"#.to_vec(),
    )
    .unwrap();
    let c = Lease::acquire(&p, "writer C", ttl).unwrap();
    assert_eq!(c.taken_over_from(), Some("pid 1 on gone"));
    let on_disk = std::fs::read_to_string(server.file_of("runs/leased/.lock")).unwrap();
    assert!(on_disk.contains("writer C"), "{on_disk}");
}
