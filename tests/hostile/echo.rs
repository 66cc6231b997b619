//! An identity provider that copies the request into its error (the `error_description`,
//! the `error` code, an HTML error page, the `Content-Type`) must not get a secret of the
//! request, in any encoding it travelled in, to the caller, the logs, the audit trail or
//! `ListProfiles`.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use tokenvend::pb::ListProfilesRequest;

use crate::support::{
    Behaviour, Server, TestIdp,
    idp::{CLIENT_ID, EchoInto},
    logs::Logs,
};

const INTO: [(EchoInto, &str); 4] = [
    (EchoInto::Description, "description"),
    (EchoInto::ErrorCode, "code"),
    (EchoInto::HtmlPage, "html"),
    (EchoInto::ContentType, "ctype"),
];

/// Secrets with the characters that encodings change: `~` (`%7E` in a form), space (`+`),
/// `+`, `/`, `=`, `:`, `%`, `&`, `?` and a non-ASCII letter.
fn secret(name: &str) -> String {
    format!("{name}~s3cret pa+ss/w=rd:%&?x~ü")
}

fn form(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Every form `value` may travel or come back in: raw, form-urlencoded, with lower-case
/// hex, with `%20` for a space, every byte percent-encoded.
fn encodings(value: &str) -> Vec<String> {
    let form = form(value);
    let mut lower = String::new();
    let mut rest = form.as_str();
    while let Some(i) = rest.find('%') {
        lower += &rest[..=i];
        lower += &rest[i + 1..i + 3].to_ascii_lowercase();
        rest = &rest[i + 3..];
    }
    lower += rest;
    vec![
        value.to_owned(),
        form.replace('+', "%20"),
        value.bytes().map(|b| format!("%{b:02X}")).collect(),
        lower,
        form,
    ]
}

/// The HTTP Basic credentials of `id` and `secret`, as RFC 6749 sends them and plain, in
/// standard and URL-safe Base64, padded or not.
fn basic(id: &str, secret: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pair in [
        format!("{}:{}", form(id), form(secret)),
        format!("{id}:{secret}"),
    ] {
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(&pair));
        }
    }
    out
}

fn profile(name: &str, idp: &TestIdp, client_auth: &str) -> String {
    format!(
        "  {name}:\n    token_url: {url}\n    client_id: \"{CLIENT_ID}\"\n{client_auth}    retry: {{ initial: 50ms, max: 100ms }}\n",
        url = idp.token_url(),
    )
}

#[tokio::test]
async fn no_secret_comes_back_through_an_echoing_provider_in_any_encoding() {
    let logs = Logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key_file = dir.path().join("client.key");
    std::fs::write(&key_file, key_pair.serialize_pem()).unwrap();

    let mut idps = Vec::new();
    let mut yaml = format!(
        "server:\n  state_dir: {}\nprofiles:\n",
        dir.path().display()
    );
    let mut forbidden = Vec::new();
    let mut names = Vec::new();
    for (into, place) in INTO {
        let idp = TestIdp::start(Behaviour::Echo(into)).await;
        let (post, basic_secret, refresh_secret, refresh) = (
            secret(&format!("post-{place}")),
            secret(&format!("basic-{place}")),
            secret(&format!("rtclient-{place}")),
            secret(&format!("refresh-{place}")),
        );
        for (kind, client_auth) in [
            (
                "post",
                format!("    client_secret: {{ value: \"{post}\" }}\n"),
            ),
            (
                "basic",
                format!(
                    "    auth_method: client_secret_basic\n    client_secret: {{ value: \"{basic_secret}\" }}\n"
                ),
            ),
            (
                "refresh",
                format!(
                    "    grant: refresh_token\n    client_secret: {{ value: \"{refresh_secret}\" }}\n    refresh_token: {{ value: \"{refresh}\" }}\n"
                ),
            ),
            (
                "jwt",
                format!(
                    "    auth_method: private_key_jwt\n    private_key: {{ file: {} }}\n    signing_alg: ES256\n",
                    key_file.display()
                ),
            ),
        ] {
            let name = format!("{kind}-{place}");
            yaml += &profile(&name, &idp, &client_auth);
            names.push(name);
        }
        for value in [&post, &basic_secret, &refresh_secret, &refresh] {
            forbidden.extend(encodings(value));
        }
        forbidden.extend(basic(CLIENT_ID, &basic_secret));
        idps.push(idp);
    }
    let server = Server::start(&yaml).await;

    let mut seen = Vec::new();
    for name in &names {
        let status = server.get(name).await.unwrap_err();
        let message = status.message().to_owned();
        assert!(
            message.len() < 600,
            "provider text is cut short: {} bytes",
            message.len()
        );
        if name.ends_with("-description") || name.ends_with("-code") {
            assert!(
                message.contains("<redacted>"),
                "the echo arrived, redacted: {message}"
            );
        }
        seen.push(format!("{name}: {message} {:?}", status.metadata()));
    }
    let profiles = server
        .client
        .clone()
        .list_profiles(ListProfilesRequest {})
        .await
        .unwrap()
        .into_inner()
        .profiles;
    for profile in &profiles {
        assert!(!profile.last_error.is_empty(), "{}", profile.name);
        seen.push(format!(
            "ListProfiles {}: {}",
            profile.name, profile.last_error
        ));
    }
    server.stop().await;

    // Every assertion each IdP was sent, and its signature on its own.
    for idp in &idps {
        assert!(idp.count() > 0);
        for request in idp.requests() {
            if let Some(jwt) = request.form.get("client_assertion") {
                forbidden.push(jwt.clone());
                forbidden.push(jwt.rsplit('.').next().unwrap().to_owned());
            }
        }
    }
    assert!(
        forbidden.iter().any(|f| f.matches('.').count() == 2),
        "assertions were sent"
    );

    let text = logs.text();
    let audit = logs.audit();
    for name in &names {
        assert!(
            text.lines()
                .any(|l| l.contains("token request failed") && l.contains(name.as_str())),
            "the failure of {name} is logged"
        );
        assert!(
            audit.iter().any(|l| l.contains(name.as_str())),
            "the refusal of {name} is audited"
        );
    }
    for needle in &forbidden {
        for place in &seen {
            assert!(!place.contains(needle.as_str()), "`{needle}` in {place}");
        }
        let line = text.lines().find(|l| l.contains(needle.as_str()));
        assert!(line.is_none(), "`{needle}` is in the logs: {line:?}");
    }
}
