//! Reading from a plain HTTP server with byte ranges (as from a model hub): header-only opens,
//! single tensors and regions, sharded sets through their index, redirects followed.

#[path = "common/http.rs"]
mod http_server;

use http_server::HttpServer;
use safeckpt_format::{Dtype, RawTensor};
use safeckpt_store::{Location, RemoteSet, StoreOptions};
use safeckpt_writer::WriteOptions;

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32 % 31) as u8 ^ seed).collect()
}

fn open(url: &str) -> (RemoteSet, safeckpt_store::ObjectLocation) {
    let loc = Location::parse(url, &StoreOptions::default()).unwrap().as_object().unwrap().clone();
    (RemoteSet::open(&loc).unwrap(), loc)
}

#[test]
fn a_file_on_a_web_server_is_read_by_ranges_through_redirects() {
    let server = HttpServer::start();
    let (a, b) = (bytes(1 << 20, 1), bytes(256 * 1024, 2));
    let tensors = vec![
        ("big", RawTensor::borrowed(Dtype::F32, vec![512, 512], &a)),
        ("small", RawTensor::borrowed(Dtype::U8, vec![512, 512], &b)),
    ];
    safeckpt_writer::write_file(server.file("model.safetensors"), &tensors, None, &WriteOptions::new().fsync(false))
        .unwrap();
    // As a hub serves it: /resolve/main/<file> redirects to the CDN.
    let (set, loc) = open(&server.url("resolve/main/model.safetensors"));
    let header_len = set.shards()[0].header().data_start() as u64;
    let (requests, sent) = server.counts();
    assert_eq!(sent, header_len, "the length prefix and the header, nothing else");
    assert_eq!(requests, 4, "two ranged GETs, each redirected once");
    assert_eq!(loc.store.stats().gets, 2);
    let got = set.read_tensors(&["small"]).unwrap();
    assert_eq!(got[0].as_ref(), b.as_slice());
    assert_eq!(server.counts().1 - sent, b.len() as u64, "only the tensor's bytes");
    let rows = set.read_region("big", &[100..102, 0..512]).unwrap();
    assert_eq!(rows, &a[100 * 2048..102 * 2048]);
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok() && r.has_checksums));
    // A missing file is an error naming it.
    let loc = Location::parse(&server.url("nope.safetensors"), &StoreOptions::default()).unwrap();
    let err = RemoteSet::open(loc.as_object().unwrap()).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
}

#[test]
fn a_sharded_set_on_a_web_server_opens_by_its_index() {
    let server = HttpServer::start();
    let data: Vec<Vec<u8>> = (0..6).map(|i| bytes(100_000, i as u8)).collect();
    let names: Vec<String> = (0..6).map(|i| format!("layers.{i}.weight")).collect();
    let tensors: Vec<_> =
        names.iter().zip(&data).map(|(n, d)| (n.as_str(), RawTensor::borrowed(Dtype::U8, vec![d.len()], d))).collect();
    safeckpt_writer::write_sharded(
        server.root.path(),
        "model",
        &tensors,
        None,
        250_000,
        &WriteOptions::new().fsync(false),
        &|_| {},
    )
    .unwrap();
    let (set, _) = open(&server.url("model.safetensors.index.json"));
    assert!(set.shards().len() >= 2);
    assert_eq!(set.names().len(), 6);
    let got = set.read_tensors(&["layers.4.weight", "layers.0.weight"]).unwrap();
    assert_eq!((got[0].as_ref(), got[1].as_ref()), (data[4].as_slice(), data[0].as_slice()));
    assert!(set.verify().unwrap().iter().all(|r| r.is_ok()));
}
