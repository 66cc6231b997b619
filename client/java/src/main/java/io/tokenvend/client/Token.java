package io.tokenvend.client;

import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;

/**
 * An access token vended by tokenvend, with what is needed to use it.
 *
 * <p>Immutable and safe to share between threads. {@link #toString()} never shows the token
 * or any header value, so an instance can be logged; {@link #accessToken()} and
 * {@link #headers()} must not be.
 */
public final class Token {
  private final String profile;
  private final String accessToken;
  private final String tokenType;
  private final Instant expiresAt;
  private final List<String> scopes;
  private final Map<String, String> headers;

  private Token(
      String profile,
      String accessToken,
      String tokenType,
      Instant expiresAt,
      List<String> scopes,
      Map<String, String> headers) {
    this.profile = profile;
    this.accessToken = accessToken;
    this.tokenType = tokenType;
    this.expiresAt = expiresAt;
    this.scopes = scopes;
    this.headers = headers;
  }

  static Token fromProto(io.tokenvend.v1.Token t) {
    Map<String, String> headers = new TreeMap<>();
    t.getHeadersMap().forEach((k, v) -> headers.put(k.toLowerCase(Locale.ROOT), v));
    // The server always sends `authorization`; this keeps the HTTP helpers correct even if a
    // future server or profile left it out.
    if (!headers.containsKey("authorization") && !t.getAccessToken().isEmpty()) {
      String type = t.getTokenType().isEmpty() ? "Bearer" : t.getTokenType();
      headers.put("authorization", type + " " + t.getAccessToken());
    }
    Instant expiresAt =
        t.hasExpiresAt()
            ? Instant.ofEpochSecond(t.getExpiresAt().getSeconds(), t.getExpiresAt().getNanos())
            : Instant.EPOCH;
    return new Token(
        t.getProfile(),
        t.getAccessToken(),
        t.getTokenType(),
        expiresAt,
        List.copyOf(t.getScopesList()),
        Collections.unmodifiableMap(headers));
  }

  /** The profile this token belongs to. */
  public String profile() {
    return profile;
  }

  /** The access token itself. Secret: never log it. */
  public String accessToken() {
    return accessToken;
  }

  /** The token type, normally {@code Bearer}. */
  public String tokenType() {
    return tokenType;
  }

  /** When the token stops being valid. */
  public Instant expiresAt() {
    return expiresAt;
  }

  /** The granted scopes. */
  public List<String> scopes() {
    return scopes;
  }

  /**
   * The headers to put on the upstream API call, names in lower case: {@code authorization}
   * plus any companion headers the profile configures (such as an API key). Secret values.
   */
  public Map<String, String> headers() {
    return headers;
  }

  /** How long the token stays valid from now on; negative once it has expired. */
  public Duration remaining(Clock clock) {
    return Duration.between(clock.instant(), expiresAt);
  }

  /** Shows the profile, type, expiry, scopes and header names, never a token or a header value. */
  @Override
  public String toString() {
    return "Token{profile="
        + profile
        + ", type="
        + tokenType
        + ", expiresAt="
        + expiresAt
        + ", scopes="
        + scopes
        + ", headers="
        + headers.keySet()
        + ", accessToken=<redacted>}";
  }
}
