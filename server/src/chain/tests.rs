//! The chain rule, once, against both stores: every test body runs over a state directory
//! and over a real `redis-server` started on a free loopback port.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use super::*;
use crate::{
    config::Config,
    store::{ProfileStore, SharedStore},
};

/// A store holding one chain, and a way to put records in it as older tokenvends did.
trait Harness {
    type Store: ChainStore + fmt::Debug;

    /// A handle on the chain, as a second server or replica would hold it.
    fn store(&self) -> Self::Store;

    /// Stores a record written by the previous version: `seed` is a fingerprint.
    async fn plant_legacy(&self, token: &str, seed: Option<&str>, refused: bool, scope: &str);

    /// Stores bytes that are not a record (hand-edited, say).
    async fn plant_garbage(&self, text: &str);
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

impl Harness for Dir {
    type Store = FileStore;

    fn store(&self) -> FileStore {
        FileStore::new(self.0.path(), "p")
    }

    async fn plant_legacy(&self, token: &str, seed: Option<&str>, refused: bool, scope: &str) {
        // The file format before chains had versions.
        let record = serde_json::json!({
            "refresh_token": token,
            "seed": seed,
            "refused": refused,
            "scope": scope,
            "updated_at": 1_700_000_000,
        });
        std::fs::write(self.0.path().join("p.refresh.json"), record.to_string()).unwrap();
    }

    async fn plant_garbage(&self, text: &str) {
        std::fs::write(self.0.path().join("p.refresh.json"), text).unwrap();
    }
}

struct Redis {
    _server: RedisServer,
    shared: SharedStore,
}

impl Redis {
    /// A store on a fresh redis-server, or `None` (said) when it is not installed.
    fn start() -> Option<Self> {
        let server = RedisServer::start()?;
        let yaml = format!(
            "server:\n  store:\n    redis:\n      url: redis://127.0.0.1:{}\n      key_prefix: tv\n      encryption_keys:\n        - {{ id: k1, key: {{ value: \"{}\" }} }}\nprofiles:\n  p:\n    token_url: http://127.0.0.1:1/token\n    grant: refresh_token\n    client_id: c\n    client_secret: {{ value: s }}\n",
            server.port,
            "A".repeat(43),
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let shared = SharedStore::new(config.server.store.as_ref().unwrap()).unwrap();
        Some(Self {
            _server: server,
            shared,
        })
    }
}

impl Harness for Redis {
    type Store = ProfileStore;

    fn store(&self) -> ProfileStore {
        self.shared.profile("p")
    }

    async fn plant_legacy(&self, token: &str, seed: Option<&str>, refused: bool, scope: &str) {
        // The sealed record before the two stores shared one format: no `updated_at`.
        let record = serde_json::json!({
            "refresh_token": token,
            "seed": seed,
            "refused": refused,
            "scope": scope,
        });
        self.store()
            .plant_chain(3, record.to_string().as_bytes())
            .await
            .unwrap();
    }

    async fn plant_garbage(&self, text: &str) {
        self.store().plant_chain(3, text.as_bytes()).await.unwrap();
    }
}

/// Runs each test body once per store: `file::<name>` and `redis::<name>`.
macro_rules! against_both_stores {
    ($($test:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Dir::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(redis) = super::Redis::start() {
                        super::$test(redis).await;
                    }
                }
            )*
        }
    };
}

against_both_stores!(
    the_seed_is_used_while_nothing_is_stored,
    the_stored_link_wins_over_the_seed_it_grew_from,
    a_new_seed_takes_over_from_a_chain_grown_from_an_old_one,
    a_chain_started_by_authorize_is_not_overtaken_by_a_configured_seed,
    a_refused_token_is_never_offered_again,
    rotating_from_a_stale_read_is_a_conflict,
    records_written_by_the_previous_version_still_read,
    an_unreadable_record_is_an_error_that_quotes_nothing,
    a_failed_write_is_retried,
    a_write_whose_answer_was_lost_is_not_a_conflict,
);

fn seed(value: &str) -> Option<SecretSource> {
    Some(SecretSource::Value(Secret::new(value)))
}

async fn token<S: ChainStore>(chain: &RefreshChain<S>) -> String {
    chain.current().await.unwrap().token.expose().to_owned()
}

async fn the_seed_is_used_while_nothing_is_stored(h: impl Harness) {
    let chain = RefreshChain::new(h.store(), seed("seed-1"));
    let link = chain.current().await.unwrap();
    assert_eq!(link.token.expose(), "seed-1");
    assert_eq!(link.scope, None);
    assert!(!format!("{link:?} {chain:?}").contains("seed-1"));

    let unseeded = RefreshChain::new(h.store(), None);
    assert!(matches!(unseeded.current().await, Err(ChainError::Missing)));
}

async fn the_stored_link_wins_over_the_seed_it_grew_from(h: impl Harness) {
    let chain = RefreshChain::new(h.store(), seed("seed-1"));
    let link = chain.current().await.unwrap();
    chain
        .rotate(&link, &Secret::new("rt-2"), Some("read"))
        .await
        .unwrap();

    // A restarted server (or another replica) continues the chain.
    let restarted = RefreshChain::new(h.store(), seed("seed-1"));
    let link = restarted.current().await.unwrap();
    assert_eq!(link.token.expose(), "rt-2");
    assert_eq!(link.scope.as_deref(), Some("read"));
    restarted
        .rotate(&link, &Secret::new("rt-3"), Some("read"))
        .await
        .unwrap();
    assert_eq!(token(&chain).await, "rt-3");

    // Without a seed configured, whatever is stored is all there is.
    assert_eq!(token(&RefreshChain::new(h.store(), None)).await, "rt-3");
}

async fn a_new_seed_takes_over_from_a_chain_grown_from_an_old_one(h: impl Harness) {
    let old = RefreshChain::new(h.store(), seed("seed-1"));
    let link = old.current().await.unwrap();
    old.rotate(&link, &Secret::new("rt-2"), Some("read"))
        .await
        .unwrap();

    let reseeded = RefreshChain::new(h.store(), seed("seed-2"));
    let link = reseeded.current().await.unwrap();
    assert_eq!(link.token.expose(), "seed-2");
    assert_eq!(link.scope, None, "the old chain's scope goes with it");
    reseeded
        .rotate(&link, &Secret::new("rt-3"), None)
        .await
        .unwrap();
    // The new chain grew from the new seed: it is kept from now on.
    assert_eq!(token(&reseeded).await, "rt-3");
    assert_eq!(
        token(&RefreshChain::new(h.store(), seed("seed-2"))).await,
        "rt-3"
    );
}

async fn a_chain_started_by_authorize_is_not_overtaken_by_a_configured_seed(h: impl Harness) {
    let authorize = RefreshChain::new(h.store(), None);
    authorize
        .start(&Secret::new("authorized"), Some("read"))
        .await
        .unwrap();

    // A stale seed left in the configuration: the person's chain wins, and keeps winning
    // after it rotates, whatever seed the rotating server or replica is configured with.
    let a = RefreshChain::new(h.store(), seed("stale-a"));
    let link = a.current().await.unwrap();
    assert_eq!(link.token.expose(), "authorized");
    assert_eq!(link.scope.as_deref(), Some("read"));
    a.rotate(&link, &Secret::new("authorized-2"), Some("read"))
        .await
        .unwrap();

    let b = RefreshChain::new(h.store(), seed("stale-b"));
    let link = b.current().await.unwrap();
    assert_eq!(link.token.expose(), "authorized-2");
    b.rotate(&link, &Secret::new("authorized-3"), Some("read"))
        .await
        .unwrap();
    assert_eq!(token(&a).await, "authorized-3");
    assert_eq!(token(&b).await, "authorized-3");
}

async fn a_refused_token_is_never_offered_again(h: impl Harness) {
    let chain = RefreshChain::new(h.store(), seed("s"));
    let link = chain.current().await.unwrap();
    chain.refuse(&link).await.unwrap();
    assert!(matches!(chain.current().await, Err(ChainError::Refused)));
    let restarted = RefreshChain::new(h.store(), seed("s"));
    assert!(matches!(
        restarted.current().await,
        Err(ChainError::Refused)
    ));

    // `tokenvend authorize` starts a new chain; then a rotated token is refused too.
    RefreshChain::new(h.store(), None)
        .start(&Secret::new("fresh"), None)
        .await
        .unwrap();
    let link = chain.current().await.unwrap();
    assert_eq!(link.token.expose(), "fresh");
    chain
        .rotate(&link, &Secret::new("fresh-2"), None)
        .await
        .unwrap();
    let link = chain.current().await.unwrap();
    assert_eq!(link.token.expose(), "fresh-2");
    chain.refuse(&link).await.unwrap();
    assert!(matches!(chain.current().await, Err(ChainError::Refused)));
}

async fn rotating_from_a_stale_read_is_a_conflict(h: impl Harness) {
    let a = RefreshChain::new(h.store(), seed("s"));
    let b = RefreshChain::new(h.store(), seed("s"));
    let read_by_a = a.current().await.unwrap();
    let read_by_b = b.current().await.unwrap();
    a.rotate(&read_by_a, &Secret::new("rt-a"), None)
        .await
        .unwrap();
    assert!(matches!(
        b.rotate(&read_by_b, &Secret::new("rt-b"), None).await,
        Err(ChainError::Conflict)
    ));
    assert!(matches!(
        b.refuse(&read_by_b).await,
        Err(ChainError::Conflict)
    ));
    assert_eq!(token(&b).await, "rt-a");

    // An authorization landing between a read and its rotation wins.
    let link = a.current().await.unwrap();
    RefreshChain::new(h.store(), None)
        .start(&Secret::new("authorized"), None)
        .await
        .unwrap();
    assert!(matches!(
        a.rotate(&link, &Secret::new("rt-a2"), None).await,
        Err(ChainError::Conflict)
    ));
    assert_eq!(token(&a).await, "authorized");
}

async fn records_written_by_the_previous_version_still_read(h: impl Harness) {
    let print = fingerprint(&Secret::new("s1"));
    h.plant_legacy("legacy", Some(&print), false, "read").await;
    let chain = RefreshChain::new(h.store(), seed("s1"));
    let link = chain.current().await.unwrap();
    assert_eq!(link.token.expose(), "legacy");
    assert_eq!(link.scope.as_deref(), Some("read"));
    chain
        .rotate(&link, &Secret::new("rt-2"), Some("read"))
        .await
        .unwrap();
    assert_eq!(token(&chain).await, "rt-2");
    // The seed it grew from still counts.
    assert_eq!(token(&RefreshChain::new(h.store(), seed("s2"))).await, "s2");

    // A legacy authorized chain (no seed) and a legacy refusal.
    h.plant_legacy("authorized", None, false, "read").await;
    assert_eq!(token(&chain).await, "authorized");
    h.plant_legacy("s1", Some(&print), true, "read").await;
    assert!(matches!(chain.current().await, Err(ChainError::Refused)));
}

async fn an_unreadable_record_is_an_error_that_quotes_nothing(h: impl Harness) {
    h.plant_garbage(
        r#"{"refresh_token": "tok-in-a-bad-record", "refused": "tok-in-a-bad-record"}"#,
    )
    .await;
    let chain = RefreshChain::new(h.store(), seed("seed-value"));
    let error = chain.current().await.unwrap_err();
    assert!(
        matches!(error, ChainError::File(_) | ChainError::Store(_)),
        "{error:?}"
    );
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("tok-in-a-bad-record"), "{shown}");
    assert!(!shown.contains("seed-value"), "{shown}");
}

async fn a_failed_write_is_retried(h: impl Harness) {
    let chain = RefreshChain::new(Flaky::new(h.store(), 2, false), seed("s"));
    let link = chain.current().await.unwrap();
    chain
        .rotate(&link, &Secret::new("rt-2"), None)
        .await
        .unwrap();
    assert_eq!(chain.store.failures.load(Ordering::SeqCst), 0);
    assert_eq!(
        token(&RefreshChain::new(h.store(), seed("s"))).await,
        "rt-2"
    );

    // A store that stays down: the error comes back once the tries are used up.
    let down = RefreshChain::new(Flaky::new(h.store(), usize::MAX, false), seed("s"));
    let link = down.current().await.unwrap();
    assert!(matches!(
        down.rotate(&link, &Secret::new("rt-3"), None).await,
        Err(ChainError::File(FileError::Io { .. }))
    ));
    assert_eq!(
        token(&RefreshChain::new(h.store(), seed("s"))).await,
        "rt-2"
    );
}

async fn a_write_whose_answer_was_lost_is_not_a_conflict(h: impl Harness) {
    let chain = RefreshChain::new(Flaky::new(h.store(), 1, true), seed("s"));
    let link = chain.current().await.unwrap();
    chain
        .rotate(&link, &Secret::new("rt-2"), None)
        .await
        .unwrap();
    assert_eq!(token(&chain).await, "rt-2");

    // So is a start.
    let authorize = RefreshChain::new(Flaky::new(h.store(), 1, true), None);
    authorize
        .start(&Secret::new("authorized"), None)
        .await
        .unwrap();
    assert_eq!(token(&chain).await, "authorized");
}

/// A store whose next `failures` writes fail, after being stored if `stored` (an answer
/// lost on the way back).
struct Flaky<S> {
    inner: S,
    failures: AtomicUsize,
    stored: bool,
}

impl<S> Flaky<S> {
    fn new(inner: S, failures: usize, stored: bool) -> Self {
        Self {
            inner,
            failures: AtomicUsize::new(failures),
            stored,
        }
    }
}

impl<S: ChainStore> ChainStore for Flaky<S> {
    type Error = ChainError;

    async fn read(&self) -> Result<(Version, Option<Record>), ChainError> {
        self.inner.read().await.map_err(Into::into)
    }

    async fn write(&self, from: Version, record: &Record) -> Result<Cas, ChainError> {
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !failing {
            return self.inner.write(from, record).await.map_err(Into::into);
        }
        if self.stored {
            self.inner.write(from, record).await.map_err(Into::into)?;
        }
        Err(ChainError::File(FileError::Io {
            path: "flaky".into(),
            source: std::io::Error::other("injected failure"),
        }))
    }
}

#[tokio::test]
async fn a_record_file_is_private_and_no_temporary_is_left() {
    let dir = Dir::new();
    let chain = RefreshChain::new(dir.store(), seed("s"));
    let link = chain.current().await.unwrap();
    chain
        .rotate(&link, &Secret::new("rt-2"), None)
        .await
        .unwrap();
    let record = dir.0.path().join("p.refresh.json");
    let mode = std::fs::metadata(&record).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dir.0.path().join("p.refresh.json.tmp").exists());
    // Still the fields older versions read.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(stored["refresh_token"], "rt-2");
    assert_eq!(stored["refused"], false);
    assert!(stored["updated_at"].as_u64().unwrap() > 0);
    assert_eq!(stored["version"], 1);
}

/// A `redis-server` of its own on a free loopback port, killed when dropped.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts one, or returns `None` (and says so) when `redis-server` is not installed
    /// and `TOKENVEND_REQUIRE_REDIS` is unset.
    fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("TOKENVEND_REQUIRE_REDIS").is_none(),
                "TOKENVEND_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("skipping: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { port, child };
        let started = Instant::now();
        while !server.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
