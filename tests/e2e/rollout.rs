//! A rolling update loses no call: while a client calls without pause, a second server
//! starts and the first gets its shutdown signal. The client routes calls as a Kubernetes
//! Service does, to the endpoints that last passed a readiness probe, probed every 200 ms:
//! so for up to one probe period after the signal it still sends calls to the first
//! server, which must keep serving them during `shutdown_delay`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokenvend::pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{Behaviour, Server, TestIdp, config, eventually, get};

const PROBE_PERIOD: Duration = Duration::from_millis(200);

struct Endpoint {
    name: &'static str,
    client: TokenServiceClient<Channel>,
    health: HealthClient<Channel>,
    served: AtomicUsize,
}

impl Endpoint {
    async fn new(name: &'static str, server: &Server) -> Arc<Self> {
        Arc::new(Self {
            name,
            client: server.new_client().await,
            health: HealthClient::new(server.channel().await),
            served: AtomicUsize::new(0),
        })
    }

    async fn ready(&self) -> bool {
        let mut health = self.health.clone();
        let check = health.check(HealthCheckRequest::default());
        matches!(
            tokio::time::timeout(PROBE_PERIOD, check).await,
            Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving
        )
    }
}

/// The endpoints that passed their last probe, as kube-proxy would route to.
type Ready = Arc<Mutex<Vec<Arc<Endpoint>>>>;

async fn probe_forever(candidates: Arc<Mutex<Vec<Arc<Endpoint>>>>, ready: Ready) {
    loop {
        let all = candidates.lock().unwrap().clone();
        let mut passed = Vec::new();
        for endpoint in all {
            if endpoint.ready().await {
                passed.push(endpoint);
            }
        }
        *ready.lock().unwrap() = passed;
        tokio::time::sleep(PROBE_PERIOD).await;
    }
}

#[tokio::test]
async fn a_rolling_update_loses_no_call() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    // One test client stands in for a whole fleet of callers: the per-caller rate limit
    // is raised so that only the rollout can fail a call.
    let yaml = format!(
        "server:\n  shutdown_delay: 1500ms\n  shutdown_grace: 5s\n  limits: {{ rate: 1000000, burst: 1000000 }}\n{}",
        config("p", &idp, "")
    );
    let mut old = Server::start(&yaml).await;
    let old_endpoint = Endpoint::new("old", &old).await;
    let candidates = Arc::new(Mutex::new(vec![old_endpoint.clone()]));
    let ready: Ready = Arc::new(Mutex::new(vec![old_endpoint.clone()]));
    let prober = tokio::spawn(probe_forever(candidates.clone(), ready.clone()));

    // The client: calls back to back, round robin over the ready endpoints.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let caller = {
        let (ready, stop, failures) = (ready.clone(), stop.clone(), failures.clone());
        tokio::spawn(async move {
            let mut calls = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let endpoints = ready.lock().unwrap().clone();
                let Some(endpoint) = endpoints.get(calls % endpoints.len().max(1)).cloned() else {
                    failures
                        .lock()
                        .unwrap()
                        .push("no ready endpoint".to_owned());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                calls += 1;
                match get(&mut endpoint.client.clone(), "p").await {
                    Ok(_) => {
                        endpoint.served.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{}: {status:?}", endpoint.name)),
                }
            }
            calls
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new replica starts and becomes ready; then the old one is told to stop.
    let new = Server::start(&yaml).await;
    let new_endpoint = Endpoint::new("new", &new).await;
    candidates.lock().unwrap().push(new_endpoint.clone());
    eventually(
        Duration::from_secs(5),
        "the new replica in rotation",
        || async { (new_endpoint.served.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    old.signal_shutdown();

    // Readiness fails at once, yet the old server still answers calls sent to it.
    let readyz = format!("http://{}/readyz", old.admin_addr);
    eventually(Duration::from_secs(1), "/readyz to fail", || async {
        let status = reqwest::get(&readyz).await.ok()?.status();
        (status == 503).then_some(())
    })
    .await;
    assert!(!old_endpoint.ready().await, "gRPC health is NOT_SERVING");
    get(&mut old_endpoint.client.clone(), "p")
        .await
        .expect("the old server serves during its shutdown delay");

    old.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let calls = caller.await.unwrap();
    prober.abort();

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert!(old_endpoint.served.load(Ordering::SeqCst) > 0);
    assert!(new_endpoint.served.load(Ordering::SeqCst) > 0);
    assert!(calls > 100, "the client kept calling ({calls} calls)");
    new.stop().await;
}
