use std::time::{Duration, SystemTime};

use super::*;
use crate::{config::Config, secret::Secret};

fn profile(extra: &str) -> Arc<Profile> {
    Config::from_yaml(&format!(
        "profiles:\n  p:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: {{ value: s }}\n    headers: {{ X-Api-Key: {{ value: the-api-key }} }}\n{extra}"
    ))
    .unwrap()
    .profiles
    .remove(0)
}

fn issued(token: &str, lifetime: Duration, refresh_in: Option<Duration>) -> IssuedToken {
    IssuedToken {
        access_token: Secret::new(token),
        token_type: "Bearer".into(),
        lifetime,
        age: Duration::ZERO,
        expires_at: SystemTime::now() + lifetime,
        refresh_in,
        scopes: vec!["s".into()],
        refresh_token: None,
        granted_scope: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_serves_until_expiry_less_min_ttl_and_never_once_rejected() {
    let token = CachedToken::new(
        &profile(""),
        issued("tok", Duration::from_secs(100), None),
        Instant::now(),
    )
    .unwrap();
    let now = Instant::now();
    assert!(token.serves(now, Duration::ZERO, None));
    assert!(token.serves(now, Duration::from_secs(100), None));
    assert!(!token.serves(now, Duration::from_secs(101), None));
    assert!(!token.serves(now, Duration::ZERO, Some(TokenDigest::of("tok"))));
    assert!(token.serves(now, Duration::ZERO, Some(TokenDigest::of("older"))));
    assert!(!token.serves(now + Duration::from_secs(100), Duration::ZERO, None));
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_is_near_the_configured_fraction_or_entra_refresh_in() {
    let sent = Instant::now();
    let lifetime = Duration::from_secs(1000);
    for _ in 0..50 {
        let token = CachedToken::new(&profile(""), issued("t", lifetime, None), sent).unwrap();
        let ahead = token.refresh_at - sent;
        assert!(
            (Duration::from_secs(750)..=Duration::from_secs(800)).contains(&ahead),
            "{ahead:?}"
        );
    }
    let token = CachedToken::new(
        &profile(""),
        issued("t", lifetime, Some(Duration::from_secs(500))),
        sent,
    )
    .unwrap();
    assert_eq!(token.refresh_at - sent, Duration::from_secs(500));
}

#[tokio::test]
async fn the_encoded_reply_carries_authorization_and_companion_headers() {
    use prost::Message as _;
    let token = CachedToken::new(
        &profile(""),
        issued("tok", Duration::from_secs(60), None),
        Instant::now(),
    )
    .unwrap();
    let reply = pb::Token::decode(token.encoded().to_bytes()).unwrap();
    assert_eq!(reply.headers["authorization"], "Bearer tok");
    assert_eq!(reply.headers["x-api-key"], "the-api-key");
    assert_eq!(reply.profile, "p");
    assert!(!format!("{token:?}").contains("tok\""));
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let retry = Retry {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    for (failures, full) in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (60, 30)] {
        let delay = backoff(retry, failures);
        let full = Duration::from_secs(full);
        assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?}");
    }
}

#[tokio::test]
async fn replacing_profiles_keeps_unchanged_slots_and_retires_the_others() {
    let named = |name: &str, extra: &str| {
        Config::from_yaml(&format!(
            "profiles:\n  {name}:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: {{ value: s }}\n{extra}"
        ))
        .unwrap()
        .profiles
        .remove(0)
    };
    let idp = IdpClient::new(Duration::from_secs(1)).unwrap();
    let cache = TokenCache::new(
        &[
            named("kept", ""),
            named("changed", ""),
            named("removed", ""),
        ],
        idp,
        None,
        crate::metrics::Metrics::new(&crate::metrics::Export::default()).unwrap(),
    );
    let kept = cache.slot("kept").unwrap();
    let changed = cache.slot("changed").unwrap();
    let removed = cache.slot("removed").unwrap();

    let changes = cache.replace_profiles(&[
        named("added", ""),
        named("changed", "    scopes: [x]\n"),
        named("kept", ""),
    ]);
    assert_eq!(&*changes.added, [Arc::from("added")]);
    assert_eq!(&*changes.changed, [Arc::from("changed")]);
    assert_eq!(&*changes.removed, [Arc::from("removed")]);
    assert_eq!(&*changes.unchanged, [Arc::from("kept")]);

    assert!(Arc::ptr_eq(&cache.slot("kept").unwrap(), &kept));
    assert!(!kept.is_retired());
    assert!(!Arc::ptr_eq(&cache.slot("changed").unwrap(), &changed));
    assert_eq!(cache.slot("changed").unwrap().profile().scopes, ["x"]);
    assert!(changed.is_retired());
    assert!(removed.is_retired());
    assert!(cache.slot("removed").is_none());
    let names: Vec<_> = cache
        .slots()
        .iter()
        .map(|s| s.profile().name.clone())
        .collect();
    assert_eq!(names, [Arc::from("added"), "changed".into(), "kept".into()]);

    cache.stop();
    assert!(cache.slot("kept").unwrap().is_retired());
}

/// Counts the allocations of the current thread, to hold the hot path to none.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `alloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(std::cell::Cell::get)
}

#[tokio::test]
async fn a_cache_hit_and_its_metrics_allocate_nothing() {
    let idp = IdpClient::new(Duration::from_secs(1)).unwrap();
    let metrics = crate::metrics::Metrics::new(&crate::metrics::Export::default()).unwrap();
    let cache = TokenCache::new(&[profile("")], idp, None, metrics.clone());
    let slot = cache.slot("p").unwrap();
    let token = CachedToken::new(
        slot.profile(),
        issued("tok", Duration::from_secs(3600), None),
        Instant::now(),
    )
    .unwrap();
    slot.current.store(Some(Arc::new(token)));
    let need = Need::default();
    // The first call may set up lazily initialised state (thread locals, the clock).
    assert!(slot.cached(&need).is_some());

    let before = allocations();
    let started = std::time::Instant::now();
    const HITS: u32 = 100_000;
    for _ in 0..HITS {
        let (encoded, _, result) = slot.cached(&need).unwrap();
        assert_eq!(result, CacheResult::Hit);
        slot.counters().served(crate::metrics::Rpc::GetToken);
        drop(encoded);
    }
    let elapsed = started.elapsed();
    assert_eq!(allocations() - before, 0, "allocations on {HITS} hits");
    eprintln!("cache hit with its counts: {:?} each", elapsed / HITS);
    assert!(metrics.prometheus_text().contains("result=\"hit\"} 100001"));
}

#[tokio::test]
async fn slots_cost_no_task_each_while_they_wait_to_refresh() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let profiles: Vec<_> = (0..1000)
        .map(|i| {
            Config::from_yaml(&format!(
                "profiles:\n  p{i}:\n    token_url: https://idp.example.com/token\n    client_id: a\n    client_secret: {{ value: s }}\n"
            ))
            .unwrap()
            .profiles
            .remove(0)
        })
        .collect();
    let cache = TokenCache::new(
        &profiles,
        IdpClient::new(Duration::from_secs(1)).unwrap(),
        None,
        crate::metrics::Metrics::new(&crate::metrics::Export::default()).unwrap(),
    );
    tokio::task::yield_now().await;
    // The refresher, one task for all of them.
    assert_eq!(tasks(), before + 1);
    drop(cache);
    for _ in 0..100 {
        if tasks() == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the refresher outlived its cache: {} tasks", tasks());
}

#[test]
fn the_ceiling_counts_the_requests_of_the_last_minute() {
    let mut state = SlotState::default();
    let start = Instant::now();
    let second = Duration::from_secs(1);
    for i in 0..3 {
        assert_eq!(state.ceiling_wait(start + i * second, 3), None);
        state.recent.push_back(start + i * second);
    }
    // The fourth waits until the first is a minute old, then the second, and so on.
    let now = start + 10 * second;
    assert_eq!(state.ceiling_wait(now, 3), Some(MINUTE - 10 * second));
    assert_eq!(state.ceiling_free_at(3), Some(start + MINUTE));
    assert_eq!(state.ceiling_wait(start + MINUTE, 3), None);
    assert_eq!(state.recent.len(), 2);
    state.recent.push_back(start + MINUTE);
    assert_eq!(state.ceiling_free_at(3), Some(start + second + MINUTE));
    // Once every request has aged out, nothing is held back and nothing is kept.
    assert_eq!(state.ceiling_wait(start + 3 * MINUTE, 3), None);
    assert_eq!(state.recent.len(), 0);
    assert_eq!(state.recent.rest.capacity(), 0);
}

#[tokio::test]
async fn health_says_when_a_person_must_authorize_and_since_when_it_fails() {
    let idp = IdpClient::new(Duration::from_secs(1)).unwrap();
    let metrics = crate::metrics::Metrics::new(&crate::metrics::Export::default()).unwrap();
    let cache = TokenCache::new(&[profile("")], idp, None, metrics);
    let slot = cache.slot("p").unwrap();
    let fail = |error: FetchError| {
        let _ = slot.finish(
            Err(FlightError::Failed(Arc::new(error))),
            Trigger::Background,
            false,
        );
    };
    let refused = || FetchError::Reauthorize {
        profile: "p".into(),
        reason: "the provider refused the refresh token (invalid_grant)".into(),
        connection: false,
    };
    let status = slot.status();
    assert_eq!(status.state, CacheState::Empty);
    assert!(!status.needs_authorization);
    assert_eq!(status.failing_since, None);

    let before = SystemTime::now();
    fail(refused());
    let status = slot.status();
    assert_eq!(status.state, CacheState::NeedsAuthorization);
    assert!(status.needs_authorization);
    let since = status.failing_since.unwrap();
    assert!(since >= before && since <= SystemTime::now());

    // Another kind of failure continues the run, but no longer asks for a person.
    std::thread::sleep(Duration::from_millis(5));
    fail(FetchError::StoreUnavailable("down".into()));
    let status = slot.status();
    assert_eq!(status.state, CacheState::Failed);
    assert!(!status.needs_authorization);
    assert_eq!(status.failing_since, Some(since));
    assert_eq!(
        cache.health().await[0].status.failing_since,
        Some(since),
        "health() reads the same status"
    );

    let token = CachedToken::new(
        slot.profile(),
        issued("tok", Duration::from_secs(3600), None),
        Instant::now(),
    )
    .unwrap();
    let _ = slot.finish(Ok(Arc::new(token)), Trigger::Background, false);
    let status = slot.status();
    assert_eq!(status.state, CacheState::Valid);
    assert_eq!(status.failing_since, None);
    assert!(!status.needs_authorization);

    // While a valid token is still served, a refused refresh is stale, not an outage; a
    // new run of failures starts from now.
    fail(refused());
    let status = slot.status();
    assert_eq!(status.state, CacheState::Stale);
    assert!(status.needs_authorization);
    assert!(status.failing_since.unwrap() > since);
    let health = cache.health().await;
    assert_eq!(health.len(), 1);
    assert_eq!(&*health[0].profile, "p");
    assert_eq!(health[0].subject, None);
    cache.stop();
}
