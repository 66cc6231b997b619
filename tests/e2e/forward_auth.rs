//! The forward-auth port (`server.forward_auth`), spoken to as a proxy speaks to it:
//! `GET /v1/headers/{profile}` answers with the token's headers and a bounded
//! `Cache-Control`; callers, `allow`, rates and rejected tokens work as on the gRPC port;
//! peers that hold a connection for nothing or send too much are cut off.

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode, header::HeaderMap};
use tokenvend_server::{Config, Listeners};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::support::{
    Behaviour, ConfigFile, Logs, Server, TestIdp, eventually, profile,
    raw::closed_within,
    security::{Pki, SaIssuer},
};

const REQUESTS: &str = "tokenvend_requests_total";

/// A configuration with the forward-auth port on, `server` lines beside it, and profiles.
fn yaml(server: &str, profiles: &[String]) -> String {
    format!(
        "server:\n  forward_auth:\n    listen: 127.0.0.1:0\n{server}profiles:\n{}",
        profiles.concat()
    )
}

/// `GET` (or another method) of a profile's headers, with these request headers.
async fn ask(
    server: &Server,
    method: Method,
    profile: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let addr = server.forward_addr.expect("the forward-auth port is on");
    let mut request =
        reqwest::Client::new().request(method, format!("http://{addr}/v1/headers/{profile}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn get(server: &Server, profile: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    ask(server, Method::GET, profile, headers).await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn answers_with_the_tokens_headers_and_a_short_cache_lifetime() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml(
        "",
        &[profile(
            "floriday",
            &idp,
            "    headers: { X-Api-Key: { value: key-123 } }\n",
        )],
    ))
    .await;

    let answer = get(&server, "floriday", &[]).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let headers = answer.headers().clone();
    assert_eq!(header(&headers, "authorization"), Some("Bearer tok-1"));
    assert_eq!(header(&headers, "x-api-key"), Some("key-123"));
    assert_eq!(
        header(&headers, "cache-control"),
        Some("private, max-age=30")
    );
    assert!(answer.bytes().await.unwrap().is_empty());

    // The gRPC port serves the same cached token: one provider request for both.
    let token = server.get("floriday").await.unwrap();
    assert_eq!(token.headers["authorization"], "Bearer tok-1");
    assert_eq!(idp.count(), 1);

    // HEAD: the same headers, no body.
    let head = ask(&server, Method::HEAD, "floriday", &[]).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header(head.headers(), "authorization"),
        Some("Bearer tok-1")
    );
    assert_eq!(header(head.headers(), "x-api-key"), Some("key-123"));
    assert!(head.bytes().await.unwrap().is_empty());

    // As Envoy's HTTP ext_authz asks: the proxied request's method, and its path after
    // the configured prefix.
    let envoy = ask(&server, Method::DELETE, "floriday/orders/1?x=y", &[]).await;
    assert_eq!(envoy.status(), StatusCode::OK);
    assert_eq!(
        header(envoy.headers(), "authorization"),
        Some("Bearer tok-1")
    );
    let elsewhere = reqwest::get(format!("http://{}/v1/other", server.forward_addr.unwrap()))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);

    // Counted under their own RPC, apart from GetToken.
    let metrics = server.metrics().await;
    let served = |rpc| {
        metrics.value(
            REQUESTS,
            &[("rpc", rpc), ("profile", "floriday"), ("outcome", "served")],
        )
    };
    assert_eq!(served("Headers"), 3.0);
    assert_eq!(served("GetToken"), 1.0);
    server.stop().await;
}

#[tokio::test]
async fn the_cache_lifetime_never_outlives_the_token() {
    // A token with 25 s to live may be cached until 10 s before it expires, not 30 s.
    let idp = TestIdp::start(Behaviour::issue(25)).await;
    let server = Server::start(&yaml("", &[profile("short", &idp, "")])).await;
    let answer = get(&server, "short", &[]).await;
    let cache_control = header(answer.headers(), "cache-control")
        .unwrap()
        .to_owned();
    let max_age: u64 = cache_control
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cache_control}"))
        .parse()
        .unwrap();
    assert!((13..=15).contains(&max_age), "{cache_control}");
    server.stop().await;

    // `max_age: 0s`: never cached.
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml("    max_age: 0s\n", &[profile("p", &idp, "")])).await;
    let answer = get(&server, "p", &[]).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(header(answer.headers(), "cache-control"), Some("no-store"));
    server.stop().await;
}

/// Everything in an answer but its date.
async fn seen(answer: reqwest::Response) -> (StatusCode, Vec<(String, String)>, String) {
    let status = answer.status();
    let mut headers: Vec<_> = answer
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, answer.text().await.unwrap())
}

#[tokio::test]
async fn callers_are_authenticated_from_the_header_the_proxy_forwards() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let issuer = SaIssuer::start().await;
    let allow = "    allow: [\"system:serviceaccount:ingress:nginx\"]\n";
    let server = Server::start(&yaml(&issuer.auth_yaml(), &[profile("api", &idp, allow)])).await;
    let proxy = format!("Bearer {}", issuer.token("ingress", "nginx"));

    // No credentials: 401 with a challenge, and the provider is never asked.
    let answer = get(&server, "api", &[]).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(answer.headers(), "www-authenticate"),
        Some("Bearer realm=\"tokenvend\"")
    );
    let body = answer.text().await.unwrap();
    assert!(
        body.contains("ServiceAccount token as `x-tokenvend-authorization: Bearer"),
        "{body}"
    );
    // The proxy's client's own `authorization` is not taken for the proxy's identity.
    let answer = get(&server, "api", &[("authorization", &proxy)]).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    let forged = format!("Bearer {}x", issuer.token("ingress", "nginx"));
    let answer = get(&server, "api", &[("x-tokenvend-authorization", &forged)]).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(!answer.text().await.unwrap().contains(&forged[7..]));
    assert_eq!(idp.count(), 0);

    let answer = get(&server, "api", &[("x-tokenvend-authorization", &proxy)]).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header(answer.headers(), "authorization"),
        Some("Bearer tok-1")
    );

    // Another ServiceAccount is not in `allow`: its answer is the one for a profile that
    // does not exist, byte for byte, so that profile names cannot be probed.
    let other = format!("Bearer {}", issuer.token("shop", "web"));
    let forbidden = seen(get(&server, "api", &[("x-tokenvend-authorization", &other)]).await).await;
    let unknown = seen(get(&server, "nope", &[("x-tokenvend-authorization", &other)]).await).await;
    assert_eq!(forbidden.0, StatusCode::FORBIDDEN);
    assert_eq!(forbidden, unknown);
    let unknown_to_the_proxy =
        seen(get(&server, "nope", &[("x-tokenvend-authorization", &proxy)]).await).await;
    assert_eq!(forbidden, unknown_to_the_proxy);
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_identifies_the_proxy_as_on_the_grpc_port() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let pki = Pki::new();
    let allow = "    allow: [\"spiffe://test/ns/ingress/sa/proxy\"]\n";
    let server =
        Server::start_secured(&yaml(&pki.tls_yaml(), &[profile("api", &idp, allow)])).await;
    let addr = server.forward_addr.unwrap();
    let client = |identity: Option<&crate::support::security::ClientCert>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", addr);
        if let Some(id) = identity {
            let pem = format!("{}{}", id.cert, id.key);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let url = format!("https://localhost:{}/v1/headers/api", addr.port());

    let proxy = pki.client("spiffe://test/ns/ingress/sa/proxy");
    let answer = client(Some(&proxy)).get(&url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        header(answer.headers(), "authorization"),
        Some("Bearer tok-1")
    );

    let stranger = pki.client("spiffe://test/ns/shop/sa/web");
    let answer = client(Some(&stranger)).get(&url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let answer = client(None).get(&url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_when_to_come_back() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml(
        "  limits: { rate: 0.2, burst: 2 }\n",
        &[profile("p", &idp, "")],
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(get(&server, "p", &[]).await.status(), StatusCode::OK);
    }
    let answer = get(&server, "p", &[]).await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = header(answer.headers(), "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&after), "{after}");
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.value(REQUESTS, &[("rpc", "Headers"), ("outcome", "rate_limited")]),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reported_token_is_replaced_once() {
    let (logs, _logging) = Logs::capture();
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml("", &[profile("p", &idp, "")])).await;
    let first = get(&server, "p", &[]).await;
    assert_eq!(
        header(first.headers(), "authorization"),
        Some("Bearer tok-1")
    );

    // The proxy reports the `authorization` value its upstream refused, as it sent it.
    let rejected = [("x-tokenvend-rejected-token", "Bearer tok-1")];
    let replaced = get(&server, "p", &rejected).await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(
        header(replaced.headers(), "authorization"),
        Some("Bearer tok-2")
    );
    assert_eq!(idp.count(), 2);
    // Many proxies report the same token: the replacement is made once.
    for _ in 0..5 {
        let again = get(&server, "p", &[("x-tokenvend-rejected-token", "tok-1")]).await;
        assert_eq!(
            header(again.headers(), "authorization"),
            Some("Bearer tok-2")
        );
    }
    assert_eq!(idp.count(), 2);
    // gRPC callers see the replacement too.
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-2");
    server.stop().await;
    // Every request was audited, and no token reached a log line.
    let text = logs.text();
    let audited = text
        .lines()
        .filter(|l| l.contains("tokenvend::audit") && l.contains("rpc=\"Headers\""))
        .count();
    assert_eq!(audited, 7, "{text}");
    assert!(!text.contains("tok-1") && !text.contains("tok-2"), "{text}");
}

#[tokio::test]
async fn a_reachable_port_without_caller_authentication_is_refused_at_load() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let serve = |yaml: String, forward: &'static str| async move {
        let config = Config::from_yaml(&yaml).unwrap();
        let listeners = Listeners {
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: None,
            forward_auth: Some(TcpListener::bind(forward).await.unwrap()),
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            tokenvend_server::serve(listeners, config, async {}),
        )
        .await
        .expect("serve returns")
    };
    let open = yaml("  shutdown_delay: 0s\n", &[profile("p", &idp, "")]);
    let error = serve(open.clone(), "0.0.0.0:0")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("server.forward_auth.listen"), "{error}");
    assert!(error.contains("without caller authentication"), "{error}");
    // On loopback, or told that a network policy guards it, it serves (and stops).
    serve(open, "127.0.0.1:0").await.unwrap();
    let guarded = yaml(
        "  shutdown_delay: 0s\n  auth:\n    allow_unauthenticated: true\n",
        &[profile("p", &idp, "")],
    );
    serve(guarded, "0.0.0.0:0").await.unwrap();
}

/// Sends `request` on a new connection; the status line of the answer, if one came, and
/// whether the server then closed the connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    let text = String::from_utf8_lossy(&answer);
    (text.lines().next().unwrap_or("").to_owned(), closed)
}

#[tokio::test]
async fn oversized_and_bodied_requests_are_refused_and_their_connection_closed() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml("", &[profile("p", &idp, "")])).await;
    let addr = server.forward_addr.unwrap();

    let big = format!(
        "GET /v1/headers/p HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let (status, closed) = raw(addr, big.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert!(closed);

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /v1/headers/p HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    let (status, closed) = raw(addr, many.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert!(closed);

    let body = b"GET /v1/headers/p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
    let (status, closed) = raw(addr, body).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(closed);
    assert_eq!(idp.count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_speaks_or_never_authenticates_is_dropped() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&yaml(
        "  limits: { idle_timeout: 1s }\n",
        &[profile("p", &idp, "")],
    ))
    .await;
    let addr = server.forward_addr.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).await);
    // One that starts a request and never finishes it fares no better.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/headers/p HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(4)).await);
    server.stop().await;

    // With caller authentication on, a connection on which no request authenticates is
    // closed after `unauthenticated_timeout`, however busy it keeps itself.
    let issuer = SaIssuer::start().await;
    let server = Server::start(&yaml(
        &format!(
            "{}  limits: {{ unauthenticated_timeout: 1s }}\n",
            issuer.auth_yaml()
        ),
        &[profile("p", &idp, "")],
    ))
    .await;
    let addr = server.forward_addr.unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /v1/headers/p HTTP/1.1\r\nhost: x\r\n\r\n";
    let started = tokio::time::Instant::now();
    let mut buf = [0; 4096];
    let closed = loop {
        if stream.write_all(request).await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(closed, "still open after {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn a_shutdown_lets_a_request_under_way_finish_then_closes_the_port() {
    // The provider takes a second: the request is still waiting when the shutdown starts.
    let idp = TestIdp::start(Behaviour::slow(3600, Duration::from_secs(1))).await;
    let mut server =
        Server::start(&yaml("  shutdown_grace: 10s\n", &[profile("p", &idp, "")])).await;
    let addr = server.forward_addr.unwrap();
    let under_way =
        tokio::spawn(async move { reqwest::get(format!("http://{addr}/v1/headers/p")).await });
    eventually(Duration::from_secs(5), "the provider request", || async {
        (idp.count() > 0).then_some(())
    })
    .await;
    server.signal_shutdown();
    let answer = under_way.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header(answer.headers(), "authorization"),
        Some("Bearer tok-1")
    );
    server.stop().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the port is closed once serve returns"
    );
}

#[tokio::test]
async fn a_reload_reaches_the_port_and_a_changed_port_waits_for_a_restart() {
    let (logs, _logging) = Logs::capture();
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server_yaml = |max_age: &str| {
        format!(
            "server:\n  reload_interval: 50ms\n  shutdown_delay: 0s\n  forward_auth:\n    listen: 127.0.0.1:0\n    max_age: {max_age}\nprofiles:\n"
        )
    };
    let allow_others = "    allow: [\"spiffe://test/other\"]\n";
    let mut file = ConfigFile::new(&format!(
        "{}{}",
        server_yaml("30s"),
        profile("p", &idp, allow_others)
    ));
    let server = Server::start_file(&file).await;
    assert_eq!(get(&server, "p", &[]).await.status(), StatusCode::FORBIDDEN);

    // The profile opened to every caller, and the port's own settings changed: the
    // first applies to the running port, the second is kept until a restart.
    file.update(&format!("{}{}", server_yaml("5s"), profile("p", &idp, "")));
    let answer = eventually(Duration::from_secs(10), "the reload", || async {
        let answer = get(&server, "p", &[]).await;
        (answer.status() == StatusCode::OK).then_some(answer)
    })
    .await;
    assert_eq!(
        header(answer.headers(), "cache-control"),
        Some("private, max-age=30")
    );
    assert!(
        logs.text().lines().any(|l| l.contains("WARN")
            && l.contains("server.forward_auth")
            && l.contains("after a restart")),
        "{}",
        logs.text()
    );
    server.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let config = |per_peer: usize| {
        yaml(
            &format!(
                "  reload_interval: 50ms\n  limits: {{ max_connections_per_peer: {per_peer} }}\n"
            ),
            &[profile("p", &idp, "")],
        )
    };
    let mut file = ConfigFile::new(&config(2));
    let server = Server::start_file(&file).await;
    let addr = server.forward_addr.unwrap();
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    // The gRPC port counts its own connections: it still serves this address.
    assert!(server.get("p").await.is_ok());

    // A reload raises the cap for the port too. (Within 5 s: a connection that sends no
    // request head is closed after 10, which would free a place anyway.)
    file.update(&config(3));
    eventually(
        Duration::from_secs(5),
        "a third connection kept",
        || async {
            let mut third = TcpStream::connect(addr).await.unwrap();
            (!closed_within(&mut third, Duration::from_millis(300)).await).then_some(())
        },
    )
    .await;
    drop((first, second));
    server.stop().await;
}
