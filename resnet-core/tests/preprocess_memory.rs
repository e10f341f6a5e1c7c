//! Preprocessing's memory is bounded by the crop, not by the resized image (a regression test for
//! the HTTP fuzz target's first finding: a 4x63751 JPEG, a quarter megapixel, made `Resize(256)`
//! allocate 3 GB). One test in its own binary, so that the process's peak RSS is its own.

#[cfg(target_os = "linux")]
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb / 1024
}

#[cfg(target_os = "linux")]
#[test]
fn an_extreme_aspect_ratio_does_not_allocate_the_whole_resize() {
    let img = image::RgbImage::from_fn(63_751, 4, |x, y| image::Rgb([(x % 256) as u8, y as u8, 9]));
    let before = peak_rss_mb();
    let input = resnet_core::preprocess::preprocess(&img);
    let grown = peak_rss_mb() - before;
    assert_eq!(input.shape(), [3, 224, 224]);
    // The crop and the rows it reads take well under a megabyte; the whole resize took 3,000 MB.
    assert!(grown < 64, "preprocessing grew the peak RSS by {grown} MB");
}
