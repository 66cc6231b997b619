//! Entry points for the coverage-guided fuzz targets in `fuzz/` (`cargo fuzz`), built
//! only with the `fuzzing` feature: the configuration parser, the reading of a token
//! endpoint's answer, and the verification of a caller's ServiceAccount token — the
//! three places where text from outside is parsed before anyone is trusted.

use std::{
    net::SocketAddr,
    sync::{Arc, LazyLock},
};

use crate::{
    auth::jwt::Verifier,
    config::{Config, JwksSource, Profile, ServiceAccountConfig},
};

/// The secret the fuzzed token requests are made with; it must never reach an error.
const SECRET: &str = "fuzz-Secret/+=%~";

/// Parses (and validates) a configuration. Building it is not fuzzed: that reads the
/// files the text names, and fuzzed text could name any file on the machine.
pub fn config(text: &str) {
    if let Ok(config) = Config::from_yaml(text) {
        // A valid configuration stays valid when built for a loopback port with nothing
        // to read: every secret inline.
        let _ = crate::app::App::build(config, SocketAddr::from(([127, 0, 0, 1], 0)), None, None);
    }
}

/// Reads `data` as a token endpoint's answer (two bytes of status, then the body).
pub fn token_response(data: &[u8]) {
    static PROFILE: LazyLock<Arc<Profile>> = LazyLock::new(|| {
        let yaml = format!(
            "profiles:\n  p:\n    token_url: https://idp.example/token\n    client_id: c\n    client_secret: {{ value: \"{SECRET}\" }}\n    scopes: [a, b]\n"
        );
        // A fixed, valid configuration: it parses, or the fuzz target is broken.
        let config = Config::from_yaml(&yaml).expect("the fuzzing profile parses");
        config.profiles[0].clone()
    });
    crate::idp::fuzz_response(&PROFILE, SECRET, data);
}

/// Verifies `token` as a caller's ServiceAccount token against a fixed key set.
pub fn caller_token(token: &str) {
    static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
        let dir = std::env::temp_dir().join(format!("tokenvend-fuzz-{}", std::process::id()));
        let jwks = dir.join("jwks.json");
        // A key nobody can sign for: P-256's generator point as a public key (its private
        // key would be 1, which no signer uses), so no fuzzed token should verify.
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig","alg":"ES256","x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY","y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}]}"#,
        );
        let config = ServiceAccountConfig {
            issuer: "https://kubernetes.default.svc".into(),
            audience: "tokenvend".into(),
            jwks: JwksSource::File(jwks),
            jwks_ca: None,
            jwks_token_file: None,
            leeway: std::time::Duration::from_secs(30),
            refetch_interval: std::time::Duration::from_secs(10),
        };
        Verifier::new(&config).expect("a verifier with a key file builds")
    });
    assert!(
        !crate::auth::jwt::fuzz_verify(&VERIFIER, token),
        "a token the fuzzer made verified"
    );
}
