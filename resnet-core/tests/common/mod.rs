//! Helpers shared by resnet-core's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/images/<name>`.
pub fn image(name: &str) -> PathBuf {
    repo_root().join("testdata/images").join(name)
}

/// `resnet-core/tests/data/<rel>`.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The good test images (every file of testdata/images but the README).
pub fn good_images() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo_root().join("testdata/images"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (e.file_type().unwrap().is_file() && !name.ends_with(".md")).then_some(name)
        })
        .collect();
    v.sort();
    v
}

/// Max and mean absolute difference of two equally long slices, with the first differing index.
pub fn diff_stats(a: &[f32], b: &[f32]) -> (f32, f64, Option<usize>) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut max = 0.0f32;
    let mut sum = 0.0f64;
    let mut first = None;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > 0.0 && first.is_none() {
            first = Some(i);
        }
        max = max.max(d);
        sum += d as f64;
    }
    (max, sum / a.len() as f64, first)
}

/// A `.pth` checkpoint laid out exactly as `torch.save(state_dict)` lays it out (zip archive
/// `archive/data.pkl` + `archive/data/<n>`, protocol-2 pickle of an OrderedDict of
/// `_rebuild_tensor_v2` calls), each tensor f32 with its own contiguous storage. Used to make
/// full-size checkpoints from synthetic weights; the tiny fixtures in tests/data/pth are the
/// ones real PyTorch wrote.
pub fn torch_style_pth(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    use std::io::Write;
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn int_tuple(p: &mut Vec<u8>, v: &[usize]) {
        p.push(b'(');
        for &x in v {
            int(p, x);
        }
        p.push(b't');
    }
    let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)R(".to_vec();
    for (i, (key, shape, _)) in tensors.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        unicode(&mut p, key);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        int_tuple(&mut p, shape);
        int_tuple(&mut p, &stride);
        p.extend_from_slice(b"\x89h\x00)Rtq\x01R");
    }
    p.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&p).unwrap();
    zip.start_file("archive/byteorder", stored).unwrap();
    zip.write_all(b"little").unwrap();
    for (i, (_, _, values)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), stored).unwrap();
        for v in values.iter() {
            zip.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap().into_inner()
}
