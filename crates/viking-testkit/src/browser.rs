//! A real headless Chromium (Debian's `chromium`) driven over the Chrome
//! DevTools Protocol on a pipe (`--remote-debugging-pipe`: commands on its
//! fd 3, answers and events on its fd 4, each message JSON ended by a NUL
//! byte), so a test needs no WebSocket client and no port. One page,
//! attached in flat mode; every call waits for its answer with a bound.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// How long one protocol call may take.
const CALL: Duration = Duration::from_secs(30);

/// A headless Chromium with one page.
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`chromium`, or `VIKING_TEST_CHROMIUM`) headless
    /// with a throwaway profile and opens one blank page. TLS errors are
    /// ignored: the test clusters' CA is their own.
    pub fn start() -> Result<Browser> {
        let bin = std::env::var("VIKING_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir()?;
        let log = profile.path().join("chromium.log");
        // fd 3 is our stdin pipe, fd 4 our stdout pipe; its own stdin and
        // stdout go nowhere.
        let script = format!(
            "exec {bin} --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --ignore-certificate-errors --no-first-run --no-default-browser-check \
             --disable-extensions --disable-background-networking --window-size=1400,1000 \
             --user-data-dir={} --remote-debugging-pipe about:blank \
             3<&0 4>&1 0</dev/null 1>/dev/null 2>>{}",
            crate::util::sh_quote(&profile.path().to_string_lossy()),
            crate::util::sh_quote(&log.to_string_lossy()),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {bin} (scripts/prereqs.sh test installs it)"))?;
        let to = child.stdin.take().context("chromium's pipe")?;
        let out = child.stdout.take().context("chromium's pipe")?;
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                msg.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .with_context(|| format!("chromium did not answer; its log: {}", log.display()))?;
        let target_id = target["targetId"]
            .as_str()
            .context("a target id")?
            .to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .context("a session id")?
            .to_string();
        b.page("Page.enable", json!({}))?;
        b.page("Runtime.enable", json!({}))?;
        Ok(b)
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .and_then(|_| self.to.flush())
            .with_context(|| format!("{method}: chromium's pipe"))?;
        let deadline = Instant::now() + CALL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = match self.from.recv_timeout(left) {
                Ok(v) => v,
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer within {CALL:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("{method}: chromium ended"),
            };
            // Events (no id) and other answers are not this call's.
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(e) = v.get("error") {
                bail!("{method}: {e}");
            }
            return Ok(v["result"].clone());
        }
    }

    fn page(&mut self, method: &str, params: Value) -> Result<Value> {
        let s = self.session.clone();
        self.call(Some(&s), method, params)
    }

    /// Loads `url` in the page (the load itself is awaited with
    /// [`Browser::wait_for`]).
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let r = self.page("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("navigate to {url}: {e}");
        }
        Ok(())
    }

    /// The value of a JavaScript expression in the page (awaited when it
    /// is a promise).
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page (it may not exist yet
    /// while a page loads), polling; fails after `timeout` with `what` and
    /// the page's text.
    pub fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let guarded = format!(
            "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&guarded).ok().and_then(|v| v.as_bool()) == Some(true) {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let text = self
                    .eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
                    .unwrap_or_default();
                return Err(anyhow!(
                    "timed out after {timeout:?} waiting for {what}; the page: {}",
                    text.as_str().unwrap_or("?")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole page, written to `path` (its directory made).
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        use base64::Engine;
        // A page being laid out again (a live refresh) may have no size
        // for a moment: asked again until it has, within a bound.
        let start = Instant::now();
        let r = loop {
            match self.page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            ) {
                Ok(r) => break r,
                Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let data = r["data"].as_str().context("screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("screenshot base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Its renderers and helpers too: the whole group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
