package io.tokenvend.client.spring;

import io.tokenvend.client.Token;
import io.tokenvend.client.TokenClient;
import io.tokenvend.client.TokenvendException;
import java.io.IOException;
import java.time.Duration;
import java.util.Objects;
import org.springframework.http.HttpHeaders;
import org.springframework.http.HttpRequest;
import org.springframework.http.client.ClientHttpRequestExecution;
import org.springframework.http.client.ClientHttpRequestInterceptor;
import org.springframework.http.client.ClientHttpResponse;

/**
 * A {@link ClientHttpRequestInterceptor} for {@code RestClient} and {@code RestTemplate} that
 * puts the headers of a tokenvend profile's token on every request and, on HTTP 401, reports
 * the token and sends the request once more with the new one. A second 401 is returned as is.
 *
 * <pre>{@code
 * RestClient api = RestClient.builder()
 *     .baseUrl("https://api.example.com")
 *     .requestInterceptor(new TokenvendRequestInterceptor(tokens, "jakamo"))
 *     .build();
 * }</pre>
 *
 * <p>Register it last: the retry sends the request on directly, past any interceptor after
 * this one. If tokenvend cannot supply a token, it throws {@link TokenvendException}, an
 * {@code IOException}, which {@code RestClient} and {@code RestTemplate} turn into a {@code
 * ResourceAccessException} with it as the cause.
 *
 * <p>Spring gives an interceptor no request timeout, so the wait for a token is bounded by
 * the request attribute {@link #TIMEOUT_ATTRIBUTE} (a {@link Duration}) when set, else by the
 * timeout given here, else by the {@link TokenClient}'s default (10 s).
 */
public final class TokenvendRequestInterceptor implements ClientHttpRequestInterceptor {
  /**
   * A request attribute bounding this request's wait for a token, such as {@code
   * .attribute(TokenvendRequestInterceptor.TIMEOUT_ATTRIBUTE, Duration.ofSeconds(1))}.
   */
  public static final String TIMEOUT_ATTRIBUTE = "io.tokenvend.client.timeout";

  private final TokenClient tokens;
  private final String profile;
  private final Duration timeout;

  /** Uses {@code profile}'s tokens, waiting for one at most the client's default timeout. */
  public TokenvendRequestInterceptor(TokenClient tokens, String profile) {
    this(tokens, profile, null);
  }

  /**
   * Uses {@code profile}'s tokens, waiting for one at most {@code timeout} (null: the client's
   * default); set it to the read timeout of the request factory.
   */
  public TokenvendRequestInterceptor(TokenClient tokens, String profile, Duration timeout) {
    this.tokens = Objects.requireNonNull(tokens, "tokens");
    this.profile = Objects.requireNonNull(profile, "profile");
    this.timeout = timeout;
  }

  @Override
  public ClientHttpResponse intercept(
      HttpRequest request, byte[] body, ClientHttpRequestExecution execution) throws IOException {
    Duration bound = timeoutOf(request.getAttributes().get(TIMEOUT_ATTRIBUTE), timeout);
    long deadline = bound == null ? 0 : System.nanoTime() + bound.toNanos();
    Token token = tokens.getToken(profile, Duration.ZERO, bound);
    put(request.getHeaders(), token);
    ClientHttpResponse response = execution.execute(request, body);
    if (response.getStatusCode().value() != 401) {
      return response;
    }
    Token fresh;
    try {
      fresh = tokens.reject(profile, token.accessToken(), left(deadline));
    } catch (TokenvendException e) {
      response.close();
      throw e;
    }
    if (fresh.accessToken().equals(token.accessToken())) {
      return response; // tokenvend has no other token: the same request would fail the same way
    }
    response.close();
    put(request.getHeaders(), fresh);
    return execution.execute(request, body);
  }

  static Duration timeoutOf(Object attribute, Duration fallback) {
    if (attribute instanceof Duration d && !d.isNegative() && !d.isZero()) {
      return d;
    }
    return fallback;
  }

  private static Duration left(long deadline) {
    if (deadline == 0) {
      return null;
    }
    return Duration.ofNanos(Math.max(deadline - System.nanoTime(), 1_000_000));
  }

  private static void put(HttpHeaders headers, Token token) {
    token.headers().forEach(headers::set);
  }
}
