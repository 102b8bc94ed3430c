//! A real headless Chromium (Debian's `chromium`), driven through
//! `chromedriver` over WebDriver with fantoccini, behind a blocking API so
//! the tests read like the others. Everything it starts is in one process
//! group that [`Browser`]'s `Drop` kills, also when a test fails.

use super::free_port;
use crate::common::{require_tool, workspace_root};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go: `target/test-artifacts/<suite>/`.
    pub artifacts: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; screenshots are
    /// kept under `target/test-artifacts/<suite>/`.
    pub fn start(suite: &str) -> Browser {
        let chromium = require_tool("chromium");
        let chromedriver = require_tool("chromedriver");
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("start chromedriver");
        let profile = tempfile::tempdir().expect("tempdir");
        let artifacts = workspace_root().join("target/test-artifacts").join(suite);
        std::fs::create_dir_all(&artifacts).expect("artifacts dir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut b = Browser { rt, client: None, driver, _profile: profile, artifacts };
        let args = serde_json::json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            format!("--user-data-dir={}", b._profile.path().display()),
        ]);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let attempt = b.rt.block_on(ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url));
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("no WebDriver session from chromedriver: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        b.client = Some(client);
        b
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.rt.block_on(self.c().current_url()).unwrap().to_string()
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.rt.block_on(self.c().source()).unwrap()
    }

    /// The visible text of the first element `css` selects.
    pub fn text(&self, css: &str) -> String {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.text().await })
            .unwrap_or_else(|e| panic!("text of {css}: {e}\n{}", self.source()))
    }

    /// Visible texts of every element `css` selects.
    pub fn texts(&self, css: &str) -> Vec<String> {
        self.rt
            .block_on(async {
                let mut out = Vec::new();
                for e in self.c().find_all(Locator::Css(css)).await? {
                    out.push(e.text().await?);
                }
                Ok::<_, fantoccini::error::CmdError>(out)
            })
            .unwrap()
    }

    pub fn click(&self, css: &str) {
        self.rt
            .block_on(async { self.c().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}\n{}", self.source()));
    }

    /// Clicks the link whose text is `text`, and waits for the page it opens.
    pub fn click_link(&self, text: &str) {
        self.to_new_page(|b| {
            b.rt.block_on(async { b.c().find(Locator::LinkText(text)).await?.click().await })
                .unwrap_or_else(|e| panic!("click link {text:?}: {e}\n{}", b.source()))
        });
    }

    /// Runs `act`, which opens another page (a click on a link or a submit
    /// button, Enter in a form), and waits until that page has loaded:
    /// WebDriver does not always wait for a navigation that a click or a
    /// key starts, and a check run too soon reads the old page.
    pub fn to_new_page(&self, act: impl FnOnce(&Self)) {
        self.eval("window.__berthOldPage = true; return null;");
        act(self);
        let deadline = Instant::now() + Duration::from_secs(10);
        let js = "return window.__berthOldPage !== true && document.readyState === 'complete';";
        // Errors while the browser is between pages mean: not yet.
        while !matches!(self.rt.block_on(self.c().execute(js, vec![])), Ok(serde_json::Value::Bool(true))) {
            assert!(Instant::now() < deadline, "no new page within 10 s; still at {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `keys` into the element `css` selects, as a user would.
    pub fn type_into(&self, css: &str, keys: &str) {
        self.rt
            .block_on(async {
                let e = self.c().find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(keys).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Sends keys to whatever has the focus.
    pub fn press(&self, keys: &str) {
        self.rt
            .block_on(async { self.c().active_element().await?.send_keys(keys).await })
            .unwrap_or_else(|e| panic!("press {keys:?}: {e}"));
    }

    /// The `id` of the focused element.
    pub fn focused_id(&self) -> String {
        self.rt.block_on(async { self.c().active_element().await?.attr("id").await }).unwrap().unwrap_or_default()
    }

    pub fn enabled(&self, css: &str) -> bool {
        self.rt.block_on(async { self.c().find(Locator::Css(css)).await?.is_enabled().await }).unwrap()
    }

    /// Runs `js` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, js: &str) -> serde_json::Value {
        self.rt.block_on(self.c().execute(js, vec![])).unwrap_or_else(|e| panic!("run {js}: {e}"))
    }

    /// Sets the window size (a phone's, for the narrow layout).
    pub fn resize(&self, w: u32, h: u32) {
        self.rt.block_on(self.c().set_window_size(w, h)).unwrap();
    }

    /// Saves a PNG of the viewport as `<artifacts>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), c.close()).await });
        }
        // chromedriver and every Chromium process it started.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
