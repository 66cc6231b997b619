//! Connections of a template profile at scale: the server's memory growth for `count`
//! connections, each imported with `PutConnection` and holding a token fetched with
//! `GetToken`, against the loopback IdP (which takes any refresh token).

use std::{path::Path, time::Instant};

use futures::{StreamExt as _, stream};
use tokenvend::pb::{
    GetTokenRequest, PutConnectionRequest, token_service_client::TokenServiceClient,
};

use crate::process::Server;

/// base64 of 32 bytes of 0x07: a fixed key, for a benchmark's throwaway state.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Calls in flight at once.
const CONCURRENCY: usize = 32;

/// The configuration: one template profile, its connections kept in `state`.
pub(crate) fn config(settings: &str, state: &Path, token_url: &str) -> String {
    format!(
        "server:\n{settings}  state_dir: {state}\n  connections: {{ key: {{ value: \"{KEY}\" }} }}\nprofiles:\n  people:\n    token_url: {token_url}\n    grant: refresh_token\n    template: true\n    client_id: bench\n    client_secret: {{ value: bench-secret }}\n    authorize_url: https://idp.example.com/auth\n    redirect_uri: https://app.example.com/cb\n    idp_requests_per_minute: 1000000\n",
        state = state.display()
    )
}

/// Imports `count` connections into `server` and fetches a token for each; the table's
/// rows.
pub(crate) async fn measure(server: &mut Server, count: usize) -> Result<Vec<String>, String> {
    server.serving().await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", server.port))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
    let client = TokenServiceClient::new(channel);
    let connect = |i: usize| {
        let mut client = client.clone();
        async move {
            let subject = format!("tenant-{i:06}@example.com");
            client
                .put_connection(PutConnectionRequest {
                    profile: "people".into(),
                    subject: subject.clone(),
                    refresh_token: format!("rt-{i:06}-{}", "r".repeat(40)),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("PutConnection: {e}"))?;
            client
                .get_token(GetTokenRequest {
                    profile: "people".into(),
                    subject,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("GetToken: {e}"))?;
            Ok::<_, String>(())
        }
    };
    // One connection first: the profile's cache of connections and the provider client
    // are made once, not per connection.
    connect(count).await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let before = server.rss_kib()?;
    let started = Instant::now();
    let results: Vec<Result<(), String>> = stream::iter(0..count)
        .map(connect)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = server.rss_kib()?;
    let growth = after.saturating_sub(before) as f64 * 1024.0;
    Ok(vec![
        format!(
            "| RSS growth for {count} connections holding 1,200-byte tokens (MiB), from {:.1} | {:.1} | | | |",
            before as f64 / 1024.0,
            growth / (1024.0 * 1024.0)
        ),
        format!(
            "| … bytes per connection | {:.0} | | | |",
            growth / count as f64
        ),
        format!(
            "| {count} connections: PutConnection then GetToken each, {CONCURRENCY} at a time (s) | {:.1} | | | |",
            elapsed.as_secs_f64()
        ),
    ])
}
