//! The streaming writer: any order, pieces, threads; and its error paths.

use safeckpt_format::{Dtype, TensorSpec};
use safeckpt_reader::Reader;
use safeckpt_writer::{StreamWriter, WriteError, WriteOptions, write_file};

use crate::common::{T, listing, sources};

fn sample() -> Vec<T> {
    (0..12)
        .map(|i| {
            let dtype = [Dtype::F32, Dtype::BF16, Dtype::I64, Dtype::U8][i % 4];
            let shape = vec![i + 1, 3];
            let len = dtype.byte_len(3 * (i + 1)).unwrap();
            T { name: format!("layer.{i}.w"), dtype, shape, data: (0..len).map(|b| (b * 7 + i) as u8).collect() }
        })
        .collect()
}

fn specs(v: &[T]) -> Vec<TensorSpec> {
    v.iter().map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone())).collect()
}

#[test]
fn streamed_file_equals_the_parallel_writers() {
    let tensors = sample();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("parallel.safetensors");
    write_file(&a, &sources(&tensors), None, &WriteOptions::new().fsync(false)).unwrap();
    let b = dir.path().join("stream.safetensors");
    let w = StreamWriter::create(&b, specs(&tensors), None, &WriteOptions::new().fsync(false)).unwrap();
    assert!(!b.exists(), "nothing visible before finish");
    // Reverse order, from several threads, half of them in 5-byte pieces.
    std::thread::scope(|s| {
        for (i, t) in tensors.iter().enumerate().rev() {
            let w = &w;
            s.spawn(move || {
                if i % 2 == 0 {
                    w.write(&t.name, &t.data).unwrap();
                } else {
                    let mut tw = w.begin(&t.name).unwrap();
                    for piece in t.data.chunks(5) {
                        tw.write(piece).unwrap();
                    }
                    tw.finish().unwrap();
                }
            });
        }
    });
    let summary = w.finish().unwrap();
    assert_eq!(summary.tensors, tensors.len());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(Reader::open(&b).unwrap().verify().unwrap().is_ok());
}

#[test]
fn streaming_errors_are_refused_and_leave_nothing() {
    let tensors = sample();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let opts = WriteOptions::new().fsync(false);
    let w = StreamWriter::create(&p, specs(&tensors), None, &opts).unwrap();
    assert!(matches!(w.write("nope", &[]), Err(WriteError::UnknownTensor { .. })));
    w.write(&tensors[0].name, &tensors[0].data).unwrap();
    assert!(matches!(w.write(&tensors[0].name, &tensors[0].data), Err(WriteError::WrittenTwice { .. })));
    assert!(matches!(w.write(&tensors[1].name, &[0; 3]), Err(WriteError::WrongLength { actual: 3, .. })));
    let mut tw = w.begin(&tensors[2].name).unwrap();
    let too_much = vec![0u8; tensors[2].data.len() + 1];
    assert!(matches!(tw.write(&too_much), Err(WriteError::WrongLength { .. })));
    let short = w.begin(&tensors[3].name).unwrap();
    assert!(matches!(short.finish(), Err(WriteError::WrongLength { actual: 0, .. })));
    assert!(w.finish().is_err());
    assert!(listing(dir.path()).is_empty(), "temp file removed: {:?}", listing(dir.path()));

    let w = StreamWriter::create(&p, specs(&tensors), None, &opts).unwrap();
    w.write(&tensors[0].name, &tensors[0].data).unwrap();
    match w.finish() {
        Err(WriteError::Incomplete { missing, .. }) => assert_eq!(missing, tensors.len() - 1),
        other => panic!("{other:?}"),
    }
    assert!(listing(dir.path()).is_empty());

    // Dropping an unfinished writer cleans up too.
    let w = StreamWriter::create(&p, specs(&tensors), None, &opts).unwrap();
    assert_eq!(listing(dir.path()).len(), 1);
    drop(w);
    assert!(listing(dir.path()).is_empty());
}
