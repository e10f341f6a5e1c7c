//! The page in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run` installs)
//! driven over the DevTools protocol loads `/`, uploads a real photo through the file input, and
//! must show the same labels as the API, the synthetic-weights banner, the class activation map
//! overlay and the history. The screenshots are test artifacts, kept in
//! `target/test-artifacts/browser/` (`.ci/run` lists them at the end) to be looked at.
//!
//! Chromium is looked up as `$RESNET_CHROMIUM`, then `chromium`, `chromium-browser`,
//! `google-chrome` on the PATH. Without one the test fails with the command that installs it;
//! `RESNET_BROWSER_TEST=skip` skips it explicitly (and says so).

mod util;

use serde_json::json;
use std::path::PathBuf;
use util::chromium::*;
use util::*;

/// Where the screenshots go: `target/test-artifacts/browser/` (beside cargo's `target/tmp`),
/// which survives the test run and is listed by `.ci/run`.
fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("test-artifacts")
        .join("browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_classifies_an_uploaded_photo_and_shows_the_map() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("RESNET_BROWSER_TEST").as_deref() == Ok("skip") {
            eprintln!("browser test SKIPPED (RESNET_BROWSER_TEST=skip)");
            return;
        }
        panic!(
            "no Chromium found for the browser test: install it (apt-get install -y chromium, as \
             .ci/run does), point RESNET_CHROMIUM at one, or set RESNET_BROWSER_TEST=skip"
        );
    };
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let photo = image_path("cat_baseline.jpg").canonicalize().unwrap();
    // What the API says about the photo: the page must show exactly this.
    let api = post_raw(
        addr,
        "/v1/classify?top_k=5",
        "image/jpeg",
        &std::fs::read(&photo).unwrap(),
    )
    .await
    .json();
    let expected_labels: Vec<String> = api["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect();

    let screenshot_dir = artifact_dir();
    std::fs::create_dir_all(&screenshot_dir).unwrap();
    let screenshot = screenshot_dir.join("page.png");
    let page_url = format!("http://{addr}/");
    let shot = screenshot.clone();
    // The DevTools session is blocking I/O: keep it off the runtime the server runs on.
    tokio::task::spawn_blocking(move || {
        let (_browser, mut cdp) = open(&chromium);
        cdp.call("Page.navigate", json!({"url": page_url}));
        cdp.wait_for(
            "document.readyState === 'complete' && !document.getElementById('synthetic-banner').hidden",
            "the page and its synthetic-weights banner",
        );
        assert!(cdp
            .eval("document.getElementById('synthetic-banner').textContent")
            .as_str()
            .unwrap()
            .contains("synthetic weights"));

        // Upload the photo through the file input, as a user choosing a file does.
        let root = cdp.call("DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let input = cdp.call("DOM.querySelector", json!({"nodeId": root, "selector": "#file"}))["nodeId"].clone();
        cdp.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": input, "files": [photo.display().to_string()]}),
        );
        cdp.wait_for(
            "document.getElementById('result').getAttribute('data-done') === '1'",
            "the predictions",
        );
        let shown: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#predictions li')).map(li => li.firstChild.firstChild.textContent.trim())",
        ))
        .unwrap();
        assert_eq!(shown, expected_labels, "the page shows other labels than the API");
        let bars: Vec<String> = serde_json::from_value(
            cdp.eval("Array.from(document.querySelectorAll('#predictions .bar span')).map(s => s.style.width)"),
        )
        .unwrap();
        assert_eq!(bars.len(), 5);
        assert!(cdp.eval("document.getElementById('timings').textContent").as_str().unwrap().contains("inference"));

        // "Where did it look": the CAM overlay replaces the preview.
        cdp.eval("document.getElementById('cam-toggle').click()");
        cdp.wait_for(
            "document.getElementById('cam-figure').getAttribute('data-loaded') === '1' && document.getElementById('cam').naturalWidth === 451 && !document.getElementById('cam-figure').hidden",
            "the class activation map",
        );
        assert_eq!(
            cdp.eval("document.getElementById('cam-label').textContent"),
            json!(expected_labels[0])
        );
        // History lists the page's recognition (and the API's) with thumbnails.
        cdp.wait_for(
            "document.querySelectorAll('#history img').length >= 2",
            "the history with thumbnails",
        );

        let png = cdp.call("Page.captureScreenshot", json!({"format": "png"}))["data"]
            .as_str()
            .unwrap()
            .to_string();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
        std::fs::write(&shot, &bytes).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(img.width() >= 300 && img.height() >= 300);
    })
    .await
    .unwrap();
    eprintln!("browser test screenshot: {}", screenshot.display());
    server.shutdown().await;
}

/// The explorer page (`/explore`, issue 18) on a server with two more backends: upload a photo,
/// every trace point appears with its time, `layer3.1` shows its tiles and its two branches
/// recomputed as feature maps, the top classes are the API's, the activation map of a chosen
/// class appears; comparing with `int8` instead of `gemm` fills the SQNR strip with int8's
/// quantisation noise. Screenshot: `target/test-artifacts/browser/explore.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_traces_an_uploaded_photo_layer_by_layer() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let weights = resnet_core::weights::synthetic_weights(0);
    let gemm = resnet_core::backend::BackendKind::Gemm
        .create(&weights, &Default::default())
        .unwrap();
    let int8 = resnet_core::backend::BackendKind::Int8
        .create(&weights, &Default::default())
        .unwrap();
    let model = model()
        .with_other_backend(std::sync::Arc::from(gemm))
        .with_other_backend(std::sync::Arc::from(int8));
    let server = start(config(), model).await;
    let addr = server.local_addr();
    let photo = image_path("cat_baseline.jpg").canonicalize().unwrap();
    let bytes = std::fs::read(&photo).unwrap();
    let api = post_raw(addr, "/v1/classify?top_k=5", "image/jpeg", &bytes)
        .await
        .json();
    let expected: Vec<String> = api["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect();
    let second_class = api["predictions"][1]["index"].as_u64().unwrap();
    let trace_points: Vec<&str> = resnet_core::arch::TracePoint::ALL
        .iter()
        .map(|p| p.name())
        .collect();
    // The page links the explorer.
    let page = String::from_utf8(get(addr, "/").await.body).unwrap();
    assert!(page.contains(r#"href="/explore""#));

    let screenshot_dir = artifact_dir();
    std::fs::create_dir_all(&screenshot_dir).unwrap();
    let screenshot = screenshot_dir.join("explore.png");
    let shot = screenshot.clone();
    let url = format!("http://{addr}/explore");
    tokio::task::spawn_blocking(move || {
        let (_browser, mut cdp) = open(&chromium);
        cdp.call("Page.navigate", json!({"url": url}));
        cdp.wait_for(
            "document.readyState === 'complete' && document.querySelectorAll('#compare option').length === 4",
            "the explorer page with the server's three backends",
        );
        // With two backends the page compares them by default.
        assert_eq!(cdp.eval("document.getElementById('compare').value"), json!("gemm"));
        let root = cdp.call("DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let input = cdp.call("DOM.querySelector", json!({"nodeId": root, "selector": "#file"}))["nodeId"].clone();
        cdp.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": input, "files": [photo.display().to_string()]}),
        );
        cdp.wait_for(
            "document.getElementById('explorer').getAttribute('data-done') === '1'",
            "the trace",
        );
        let rows: Vec<(String, String)> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#layers tr')).map(tr => [tr.dataset.layer, tr.querySelector('.ms').textContent])",
        ))
        .unwrap();
        let names: Vec<&String> = rows.iter().map(|(n, _)| n).collect();
        assert_eq!(names, trace_points.iter().collect::<Vec<_>>());
        for (name, ms) in &rows {
            let v: f64 = ms.strip_suffix(" ms").unwrap().parse().unwrap();
            assert!((0.0..60_000.0).contains(&v), "{name}: {ms}");
        }
        // One SQNR cell per layer, native against gemm: rounding-level differences only.
        let sqnr: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#sqnr-strip div')).map(d => d.textContent)",
        ))
        .unwrap();
        assert_eq!(sqnr.len(), trace_points.len());
        for s in &sqnr {
            assert!(s == "∞" || s.parse::<f64>().unwrap() > 60.0, "SQNR {s}");
        }
        // Click layer3.1: its 16 most active channels as tiles from one 4x4 sheet of 14x14 maps.
        cdp.eval("document.querySelector('#layers tr[data-layer=\"layer1.0\"]').click()");
        cdp.eval("document.querySelector('#layers tr[data-layer=\"layer3.1\"]').click()");
        cdp.wait_for(
            "document.getElementById('detail').dataset.layer === 'layer3.1' && document.getElementById('tiles').getAttribute('data-loaded') === '1'",
            "the tiles of layer3.1",
        );
        assert_eq!(cdp.eval("document.querySelectorAll('#tiles .tile').length"), json!(16));
        assert_eq!(cdp.eval("document.getElementById('tiles').dataset.sheet"), json!("56x56"));
        let captions: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#tiles .tile span')).map(s => s.textContent)",
        ))
        .unwrap();
        assert!(captions.iter().all(|c| c.starts_with('#')), "{captions:?}");
        assert!(cdp.eval("document.getElementById('detail').textContent").as_str().unwrap().contains("ReLU"));
        // Its two branches, their sum and the ReLU'd output as feature maps, recomputed by the
        // server from the block's input: 16 tiles per stage (the page asks for min(16, maps)).
        cdp.wait_for(
            "document.getElementById('branches') && document.getElementById('branches').getAttribute('data-done') === '1' && document.querySelectorAll('#branches .stage-tiles[data-loaded]').length === 5",
            "the branches of layer3.1",
        );
        assert_eq!(
            cdp.eval("Array.from(document.querySelectorAll('#branches .stage[data-stage]')).map(s => s.dataset.stage)"),
            json!(["conv1", "identity", "conv2", "sum", "output"])
        );
        assert_eq!(cdp.eval("document.querySelectorAll('#branches .stage[data-stage] .tile').length"), json!(5 * 16));
        let off = cdp.eval("document.getElementById('relu-off').textContent");
        assert!(off.as_str().unwrap().contains("% of the sum's values were below 0"), "{off}");
        // The top classes are the API's.
        let shown: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#top li .label')).map(s => s.firstChild.textContent.trim())",
        ))
        .unwrap();
        assert_eq!(shown, expected, "the explorer shows other classes than /v1/classify");
        // The activation map of the second class.
        cdp.eval("document.querySelectorAll('#top li')[1].click()");
        cdp.wait_for(
            &format!("document.getElementById('cam-figure').getAttribute('data-loaded') === '1' && document.getElementById('cam-figure').dataset.class === '{second_class}' && document.getElementById('cam').naturalWidth === 451"),
            "the activation map of the second class",
        );
        assert_eq!(cdp.eval("document.getElementById('cam-label').textContent"), json!(expected[1]));
        // Compare with int8 instead: the page traces again, and the strip shows where int8
        // departs from native (finite, quantisation-level SQNR; bounds measured in resnet-cli's
        // tests/explore.rs, here only that it is int8's: finite and under f32-level 60 dB).
        cdp.eval("const c = document.getElementById('compare'); c.value = 'int8'; c.dispatchEvent(new Event('change'))");
        cdp.wait_for(
            "document.getElementById('explorer').getAttribute('data-done') === '1' && document.getElementById('sqnr-caption').textContent.includes('against int8')",
            "the trace compared with int8",
        );
        let sqnr: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#sqnr-strip div')).map(d => d.textContent)",
        ))
        .unwrap();
        assert_eq!(sqnr.len(), trace_points.len());
        for s in &sqnr {
            let db: f64 = s.parse().unwrap_or_else(|_| panic!("SQNR '{s}' is not a finite number"));
            assert!(db > 0.0 && db < 60.0, "int8 SQNR {db} dB");
        }
        cdp.wait_for(
            "document.getElementById('branches') && document.getElementById('branches').getAttribute('data-done') === '1'",
            "the branches of layer3.1 again",
        );
        let (w, h) = cdp.screenshot(&shot);
        assert!(w >= 300 && h >= 300);
    })
    .await
    .unwrap();
    eprintln!("explorer screenshot: {}", screenshot.display());
    server.shutdown().await;
}

/// The live panel of `resnet serve --watch` (issue 17): a server watching a folder, the page
/// open; a photo dropped into the folder appears in the source's panel with the top-1 label
/// `/v1/classify` gives the same photo, and a photo whose top-1 is the `--alert` class lights
/// the panel up. Screenshot: `browser/watch.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_live_panel_per_watch_source_with_alerts() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    // What the API says about the photos, from a server without sources.
    let plain = start(config(), model()).await;
    let classify = |name: &'static str| {
        let addr = plain.local_addr();
        async move {
            post_raw(
                addr,
                "/v1/classify?top_k=1000",
                "image/jpeg",
                &image_bytes(name),
            )
            .await
            .json()
        }
    };
    let cat = classify("cat_baseline.jpg").await;
    let cat_label = cat["predictions"][0]["label"].as_str().unwrap().to_string();
    let prob_of = |v: &serde_json::Value, class: u64| {
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["index"].as_u64() == Some(class))
            .map_or(0.0, |p| p["probability"].as_f64().unwrap() as f32)
    };
    // The alert class: one of the cat's top 5 that a second photo has clearly less of (the
    // synthetic weights may give every photo the same top-1, so the top-1 alone cannot tell
    // them apart). The threshold sits 0.1% under the cat's probability of it: the watcher's
    // softmax of the same logits may differ in the last bit, never by 0.1%; the other photo
    // is at least 1% under.
    let mut chosen = None;
    'photos: for name in [
        "coffee_progressive.jpg",
        "hopper_cmyk.jpg",
        "fig_lossy.webp",
        "astronaut_rgb.png",
    ] {
        let v = classify(name).await;
        for p in cat["predictions"].as_array().unwrap().iter().take(5) {
            let class = p["index"].as_u64().unwrap();
            let p_cat = p["probability"].as_f64().unwrap() as f32;
            if prob_of(&v, class) < p_cat * 0.99 {
                let label = v["predictions"][0]["label"].as_str().unwrap().to_string();
                chosen = Some((name, label, class as usize, p_cat * 0.999));
                break 'photos;
            }
        }
    }
    let (other_photo, other_label, alert_class, min_prob) =
        chosen.expect("a test photo with clearly less of one of the cat's top 5 classes");
    plain.shutdown().await;

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("yard");
    std::fs::create_dir(&dir).unwrap();
    let config = resnet_server::Config {
        watch: Some(resnet_server::watch::WatchConfig {
            sources: vec![
                resnet_watch::SourceSpec::parse(&format!("yard={}", dir.display())).unwrap(),
            ],
            options: resnet_watch::WatchOptions {
                alert: Some(resnet_watch::AlertRule {
                    classes: vec![alert_class],
                    min_prob,
                }),
                ..resnet_watch::WatchOptions::default()
            },
            // Every frame reported (the panel shows non-alerts too).
            filter: resnet_watch::EventFilter::default(),
        }),
        ..config()
    };
    let server = start(config, model()).await;
    let addr = server.local_addr();
    let screenshot_dir = artifact_dir();
    std::fs::create_dir_all(&screenshot_dir).unwrap();
    let screenshot = screenshot_dir.join("watch.png");
    let shot = screenshot.clone();
    let url = format!("http://{addr}/");
    let drop_in = move |photo: &str, name: &str| {
        let staging = root.path().join(name);
        std::fs::copy(image_path(photo), &staging).unwrap();
        std::fs::rename(&staging, dir.join(name)).unwrap();
    };
    tokio::task::spawn_blocking(move || {
        let (_browser, mut cdp) = open(&chromium);
        cdp.call("Page.navigate", json!({"url": url}));
        cdp.wait_for(
            "!document.getElementById('watch').hidden && document.getElementById('watch-status').textContent === 'Live.' && document.querySelector('.source[data-source=\"yard\"]') !== null",
            "the live panel of source yard",
        );
        let panel = "document.querySelector('.source[data-source=\"yard\"]')";
        drop_in(other_photo, "first.jpg");
        cdp.wait_for(
            &format!("{panel}.dataset.what === 'first.jpg'"),
            "the first photo in the panel",
        );
        assert_eq!(cdp.eval(&format!("{panel}.dataset.top1")), json!(other_label));
        assert_eq!(cdp.eval(&format!("{panel}.classList.contains('alert')")), json!(false));
        drop_in("cat_baseline.jpg", "second.jpg");
        cdp.wait_for(
            &format!("{panel}.dataset.what === 'second.jpg'"),
            "the cat in the panel",
        );
        assert_eq!(cdp.eval(&format!("{panel}.dataset.top1")), json!(cat_label));
        assert_eq!(cdp.eval(&format!("{panel}.classList.contains('alert')")), json!(true));
        assert_eq!(
            cdp.eval(&format!("getComputedStyle({panel}.querySelector('.badge')).display")),
            json!("inline"),
            "the ALERT badge shows"
        );
        assert_eq!(
            cdp.eval(&format!("{panel}.querySelector('.name').textContent")),
            json!("yard")
        );
        cdp.wait_for(
            &format!("{panel}.querySelector('img').naturalWidth > 0"),
            "the frame's thumbnail",
        );
        // The history lists the watcher's frames with their source.
        cdp.wait_for(
            "Array.from(document.querySelectorAll('#history .when')).filter(w => w.textContent.includes('watch:yard')).length === 2",
            "the watched frames in the history",
        );
        let (w, h) = cdp.screenshot(&shot);
        assert!(w >= 300 && h >= 300);
    })
    .await
    .unwrap();
    eprintln!("browser test screenshot: {}", screenshot.display());
    server.shutdown().await;
}
