package io.tokenvend.client;

import java.io.IOException;
import java.time.Duration;
import java.util.Objects;
import okhttp3.Interceptor;
import okhttp3.Request;
import okhttp3.Response;

/**
 * An OkHttp application interceptor that puts the headers of a tokenvend profile's token on
 * every request. Pair it with {@link TokenvendAuthenticator} to handle 401:
 *
 * <pre>{@code
 * OkHttpClient http = new OkHttpClient.Builder()
 *     .addInterceptor(new TokenvendInterceptor(tokens, "jakamo"))
 *     .authenticator(new TokenvendAuthenticator(tokens, "jakamo"))
 *     .build();
 * }</pre>
 *
 * <p>The wait for a token is bounded by the call's timeout ({@code callTimeout}), else by its
 * read timeout, else by the {@link TokenClient}'s default. A failure is thrown as {@link
 * TokenvendException}, an {@link IOException}, so that OkHttp reports it to the caller like a
 * transport error (also for {@code enqueue}).
 *
 * <p>The token sent is attached to the request as a tag, so that the authenticator reports
 * exactly that token.
 */
public final class TokenvendInterceptor implements Interceptor {
  private final TokenClient tokens;
  private final String profile;

  /** What a request was sent with, for the authenticator. */
  record Sent(Token token, long deadlineNanos) {
    /** What is left of the call's time, at least a millisecond. */
    Duration left() {
      return Duration.ofNanos(Math.max(deadlineNanos - System.nanoTime(), 1_000_000));
    }
  }

  /** Puts the headers of {@code profile}'s token from {@code tokens} on every request. */
  public TokenvendInterceptor(TokenClient tokens, String profile) {
    this.tokens = Objects.requireNonNull(tokens, "tokens");
    this.profile = Objects.requireNonNull(profile, "profile");
  }

  @Override
  public Response intercept(Chain chain) throws IOException {
    long callTimeout = chain.call().timeout().timeoutNanos();
    long bound =
        callTimeout > 0
            ? callTimeout
            : chain.readTimeoutMillis() > 0
                ? Duration.ofMillis(chain.readTimeoutMillis()).toNanos()
                : TokenClient.DEFAULT_TIMEOUT.toNanos();
    long deadline = System.nanoTime() + bound;
    Token token = tokens.getToken(profile, Duration.ZERO, Duration.ofNanos(bound));
    return chain.proceed(withToken(chain.request(), new Sent(token, deadline)));
  }

  static Request withToken(Request request, Sent sent) {
    Request.Builder b = request.newBuilder().tag(Sent.class, sent);
    sent.token().headers().forEach(b::header);
    return b.build();
  }
}
