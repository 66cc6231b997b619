//! What the IdP receives for each client authentication method.

use crate::support::{
    Behaviour, Server, TestIdp, config,
    idp::{CLIENT_ID, CLIENT_SECRET},
};

#[tokio::test]
async fn client_secret_post_sends_credentials_and_parameters_in_the_form() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config(
        "p",
        &idp,
        "    scopes: [\"api://orders/.default\", read]\n    audience: https://api.example.com\n    resource: urn:orders\n    params: { tenant_hint: north }\n",
    ))
    .await;
    let token = server.get("p").await.unwrap();
    assert_eq!(token.token_type, "Bearer", "`bearer` is normalised");
    assert_eq!(token.scopes, ["api://orders/.default", "read"]);

    let request = &idp.requests()[0];
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.authorization, None);
    let form = &request.form;
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(form["scope"], "api://orders/.default read");
    assert_eq!(form["audience"], "https://api.example.com");
    assert_eq!(form["resource"], "urn:orders");
    assert_eq!(form["tenant_hint"], "north");
    server.stop().await;
}

#[tokio::test]
async fn client_secret_basic_form_encodes_a_secret_with_special_characters() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let server = Server::start(&config("p", &idp, "    auth_method: client_secret_basic\n")).await;
    // The IdP decodes per RFC 6749 §2.3.1 and refuses a wrong secret: getting a token
    // proves `+/=:%&?` survived.
    assert_eq!(server.get("p").await.unwrap().access_token, "tok-1");
    let request = &idp.requests()[0];
    assert!(
        request
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic ")
    );
    assert!(!request.form.contains_key("client_secret"));
    assert!(!request.form.contains_key("client_id"));
    server.stop().await;
}

#[tokio::test]
async fn companion_headers_come_with_the_token() {
    let idp = TestIdp::start(Behaviour::issue(3600)).await;
    let key_file = tempfile_with("floriday-api-key\n");
    let server = Server::start(&config(
        "p",
        &idp,
        &format!(
            "    headers: {{ X-Api-Key: {{ file: {} }} }}\n",
            key_file.display()
        ),
    ))
    .await;
    let token = server.get("p").await.unwrap();
    assert_eq!(token.headers["authorization"], "Bearer tok-1");
    assert_eq!(token.headers["x-api-key"], "floriday-api-key");
    assert_eq!(token.headers.len(), 2);
    assert_eq!(token.profile, "p");
    server.stop().await;
}

fn tempfile_with(content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tokenvend-test-{}-{}",
        std::process::id(),
        content.len()
    ));
    std::fs::write(&path, content).unwrap();
    path
}
