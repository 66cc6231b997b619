//! A refresh-token chain survives disk and provider trouble: a rotated refresh token whose
//! write fails is kept and sent next (never the spent one), and a slow rotating answer is
//! waited for rather than abandoned.
//!
//! A full disk is stood in for by a directory at the path of the record's temporary file:
//! the tests run as root, where a read-only directory does not stop a write, but no one
//! can open a directory for writing.

use std::{path::Path, time::Duration};

use tonic::Code;

use crate::support::{Behaviour, Server, TestIdp, eventually};

/// Refreshes are driven by reporting each token rejected, so rejections are not spaced.
fn config(idp: &TestIdp, state_dir: &Path, timeout: &str) -> String {
    format!(
        "server:\n  shutdown_delay: 0s\n  state_dir: {dir}\nprofiles:\n  p:\n    token_url: {url}\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    refresh_token: {{ value: rt-0 }}\n    timeout: {timeout}\n    rejected_token_min_interval: 0s\n",
        dir = state_dir.display(),
        url = idp.token_url(),
    )
}

/// The refresh token stored in `state_dir` for profile `p`.
fn stored(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join("p.refresh.json")).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["refresh_token"].as_str().map(str::to_owned)
}

/// The refresh tokens the IdP was sent, in order.
fn sent(idp: &TestIdp) -> Vec<String> {
    idp.requests()
        .iter()
        .filter_map(|r| r.form.get("refresh_token").cloned())
        .collect()
}

/// A rotating provider and a server whose `state_dir` cannot take a record: the disk
/// "fills" (a directory stands at the record's temporary path). Remove the returned path
/// to free it.
async fn blocked_disk() -> (TestIdp, tempfile::TempDir, std::path::PathBuf, Server) {
    let idp = TestIdp::start(Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::ZERO,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("p.refresh.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let server = Server::start(&config(&idp, dir.path(), "5s")).await;
    (idp, dir, blocker, server)
}

#[tokio::test]
async fn a_kept_token_is_stored_as_soon_as_the_disk_takes_it_without_another_refresh() {
    let (idp, dir, blocker, server) = blocked_disk().await;
    server.get("p").await.expect("served while the write fails");
    assert_eq!(stored(dir.path()), None);

    // The disk is freed; nobody asks for a token. The kept link is written anyway, so a
    // restart now would not lose the chain.
    std::fs::remove_dir(&blocker).unwrap();
    eventually(Duration::from_secs(10), "the kept link stored", || async {
        (stored(dir.path()).as_deref() == Some("rt-1")).then_some(())
    })
    .await;
    assert_eq!(sent(&idp), ["rt-0"], "no further refresh was needed");
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_token_that_cannot_be_written_is_kept_and_sent_next() {
    let (idp, dir, blocker, server) = blocked_disk().await;

    // The access token is served although its refresh token could not be stored.
    let first = server.get("p").await.expect("served while the write fails");
    assert_eq!(first.access_token, "tok-1");
    assert_eq!(stored(dir.path()), None);

    // The next refresh sends the rotated token from memory, not the spent seed.
    let second = server.reject("p", &first.access_token).await.unwrap();
    assert_eq!(second.access_token, "tok-2");

    // The disk is freed: the next refresh stores the kept link first, then its successor.
    std::fs::remove_dir(&blocker).unwrap();
    let third = server.reject("p", &second.access_token).await.unwrap();
    assert_eq!(third.access_token, "tok-3");
    assert_eq!(stored(dir.path()).as_deref(), Some("rt-3"));
    assert_eq!(
        sent(&idp),
        ["rt-0", "rt-1", "rt-2"],
        "no spent token was sent"
    );
    server.stop().await;

    // The chain survives a restart.
    let server = Server::start(&config(&idp, dir.path(), "5s")).await;
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-4");
    server.stop().await;
}

#[tokio::test]
async fn a_rotating_answer_slower_than_the_timeout_is_not_abandoned() {
    // The provider spends `rt-0` at once and answers after 600 ms; the profile's timeout
    // is 300 ms, and the caller gives up after 100 ms.
    let idp = TestIdp::start(Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::from_millis(600),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(&idp, dir.path(), "300ms")).await;

    let mut client = server.client.clone();
    let mut request = tonic::Request::new(tokenvend::pb::GetTokenRequest {
        profile: "p".into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(100));
    let status = client.get_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);

    // The fetch went on without the caller, and its rotated token was stored.
    eventually(
        Duration::from_secs(5),
        "the rotated token to be stored",
        || async { (stored(dir.path()).as_deref() == Some("rt-1")).then_some(()) },
    )
    .await;
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    let again = server.reject("p", "tok-1").await.unwrap();
    assert_eq!(again.access_token, "tok-2");
    assert_eq!(sent(&idp), ["rt-0", "rt-1"]);
    server.stop().await;
}

fn authorize_config(state_dir: &Path) -> tokenvend_server::Config {
    tokenvend_server::Config::from_yaml(&format!(
        "server:\n  state_dir: {}\nprofiles:\n  p:\n    token_url: https://idp.example.com/token\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n    authorize_url: https://idp.example.com/authorize\n    redirect_uri: https://app.example.com/callback\n",
        state_dir.display()
    ))
    .unwrap()
}

/// Runs `tokenvend authorize` for `p`; whether it showed the provider's URL, and its error.
async fn authorize(config: &tokenvend_server::Config) -> (bool, String) {
    let mut shown = false;
    let result = tokenvend_server::authorize::run(
        config,
        "p",
        |_| shown = true,
        async || Err(std::io::Error::other("no one at the terminal")),
    )
    .await;
    (shown, result.unwrap_err().to_string())
}

#[tokio::test]
async fn authorize_checks_the_state_dir_before_sending_anyone_to_the_provider() {
    let dir = tempfile::tempdir().unwrap();

    // A state directory that cannot keep the answer: no one is sent to approve.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("p.refresh.json.tmp")).unwrap();
    let (shown, error) = authorize(&authorize_config(&blocked)).await;
    assert!(
        !shown,
        "the URL was shown for a directory that cannot be written"
    );
    assert!(error.contains("p.refresh.json.tmp"), "{error}");

    // One that does not exist yet is made (owner only) before the URL is shown.
    let missing = dir.path().join("new/state");
    let (shown, _) = authorize(&authorize_config(&missing)).await;
    assert!(shown);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&missing).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        std::fs::read_dir(&missing).unwrap().next().is_none(),
        "the probe left nothing"
    );
}

/// A small tmpfs mounted for one test, and unmounted when dropped: a disk that really
/// fills. Mounting needs root (CI runs as root); elsewhere the test says so and skips,
/// unless `TOKENVEND_REQUIRE_TMPFS` is set.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("TOKENVEND_REQUIRE_TMPFS").is_none(),
                "TOKENVEND_REQUIRE_TMPFS is set but a tmpfs cannot be mounted here"
            );
            eprintln!("skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system until a write fails; returns the filler, to free it later.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = [0u8; 4096];
        while file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_does_not_lose_the_chain() {
    let Some(disk) = Tmpfs::mount("64k") else {
        return;
    };
    let idp = TestIdp::start(Behaviour::Rotate {
        lifetime: 3600,
        delay: Duration::ZERO,
    })
    .await;
    let state = disk.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let server = Server::start(&config(&idp, &state, "5s")).await;
    let filler = disk.fill();

    // The rotation's write fails with ENOSPC; the access token is served all the same.
    let first = server.get("p").await.expect("served on a full disk");
    assert_eq!(first.access_token, "tok-1");
    assert_eq!(stored(&state), None);
    // The next refresh sends the kept token, not the spent one.
    let second = server.reject("p", &first.access_token).await.unwrap();
    assert_eq!(second.access_token, "tok-2");

    // Space again: the kept link is written without waiting for another refresh.
    std::fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(10), "the kept link stored", || async {
        (stored(&state).as_deref() == Some("rt-2")).then_some(())
    })
    .await;
    assert_eq!(sent(&idp), ["rt-0", "rt-1"], "no spent token was sent");
    server.stop().await;
}
