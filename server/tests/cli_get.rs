//! `tokenvend get` says why it got no token, down to the operating system's error.

use std::process::Command;

fn get(server: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .args(["get", "p", "--server", server])
        .env_remove("TOKENVEND_TOKEN_FILE")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_server_is_named_with_the_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    // With a scheme, and without one (plaintext is assumed).
    for server in [format!("http://{addr}"), addr.to_string()] {
        let (ok, stderr) = get(&server);
        assert!(!ok);
        assert!(
            stderr.starts_with("tokenvend get: tokenvend: Unavailable: "),
            "{stderr}"
        );
        assert!(stderr.contains("Connection refused"), "{stderr}");
    }
}

#[test]
fn an_unusable_address_says_what_is_wrong() {
    let (ok, stderr) = get("tokenvend:port");
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        "tokenvend get: invalid tokenvend address \"tokenvend:port\": the port is not a number from 0 to 65535"
    );
}
