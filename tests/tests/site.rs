//! The static file + upload + session site (`upload_site --public DIR`) in a real headless
//! Chromium: the browser logs in (a session cookie, the name on the page), uploads a file
//! through the page's form (`multipart/form-data` from the browser itself), and the stored
//! file is downloaded back, whole and by range, with curl; the public folder's stylesheet is
//! served as a static file. A screenshot goes to `output_dir("site")`.

use werkmann_tests::browser::Browser;
use werkmann_tests::{curl_ok, curl_status, free_port, output_dir, temp_dir, App};

#[tokio::test]
async fn a_browser_logs_in_and_uploads_through_the_form() {
    let dir = temp_dir("site");
    let (public, store, sessions) = (dir.join("public"), dir.join("store"), dir.join("sessions"));
    for d in [&public, &store, &sessions] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(
        public.join("style.css"),
        "body { font-family: sans-serif }\n",
    )
    .unwrap();
    let upload = dir.join("report 2026.txt");
    let data: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&upload, &data).unwrap();
    let port = free_port();
    let _site = App::start(
        "upload_site",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--public",
            public.to_str().unwrap(),
            "--store-dir",
            store.to_str().unwrap(),
            "--session-store",
            sessions.to_str().unwrap(),
        ],
        &[port],
    );
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    b.type_into("form[action='/login'] input[name=name]", "Alice")
        .await;
    b.click("form[action='/login'] button").await;
    b.wait_for(
        "return document.querySelector('h1').textContent === 'Hello, Alice'",
        "the logged-in page",
    )
    .await;
    // The form's file input takes a path, as a user picking the file does.
    b.type_into("input[type=file]", upload.to_str().unwrap())
        .await;
    b.type_into("input[name=note]", "quarterly").await;
    b.click("form[action='/upload'] button").await;
    // Uploaded from a page, the site redirects to the list of stored files.
    let list = b
        .wait_for(
            "return location.pathname === '/uploads' ? document.body.innerText : ''",
            "the uploads list",
        )
        .await;
    let list: serde_json::Value =
        serde_json::from_str(list.as_str().unwrap()).expect("the list is JSON");
    let stored = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().ends_with("report_2026.txt"))
        .unwrap_or_else(|| panic!("the upload is listed: {list}"));
    assert_eq!(stored["size"], data.len());
    let name = stored["name"].as_str().unwrap();
    b.goto(&format!("{base}/")).await;
    b.screenshot(&output_dir("site").join("site.png")).await;
    b.quit().await;

    // The stored file, whole and in part, and the static stylesheet.
    let got = curl_ok(&[&format!("{base}/uploads/{name}")]);
    assert_eq!(String::from_utf8(got).unwrap(), data);
    let part = curl_ok(&["-r", "0-9", &format!("{base}/uploads/{name}")]);
    assert_eq!(part, b"line 0\nlin");
    let css = curl_ok(&[&format!("{base}/style.css")]);
    assert_eq!(css, b"body { font-family: sans-serif }\n");
    let traversal = curl_status(&["--path-as-is", &format!("{base}/uploads/..%2fsessions")]);
    // The static layer, first in line, refuses any `..` (403) before a route sees it.
    assert_eq!(traversal, 403);
    assert_eq!(curl_status(&[&format!("{base}/uploads/nope.txt")]), 404);
}
