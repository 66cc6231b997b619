package io.tokenvend.client;

import java.io.IOException;
import java.util.Objects;
import okhttp3.Authenticator;
import okhttp3.Request;
import okhttp3.Response;
import okhttp3.Route;

/**
 * An OkHttp authenticator that, on HTTP 401, reports the token the request carried to
 * tokenvend and retries the request once with the new token. See {@link TokenvendInterceptor}.
 *
 * <p>It gives up (returns {@code null}, so the 401 reaches the caller) when the request was
 * already retried after a 401, when its body cannot be sent twice ({@code
 * RequestBody.isOneShot()}), or when tokenvend has no token other than the refused one. Used
 * alone, without the interceptor, it adds the token only after a first 401. The wait for the
 * new token takes what is left of the call's time.
 */
public final class TokenvendAuthenticator implements Authenticator {
  private final TokenClient tokens;
  private final String profile;

  /** Answers a 401 with a new token of {@code profile} from {@code tokens}. */
  public TokenvendAuthenticator(TokenClient tokens, String profile) {
    this.tokens = Objects.requireNonNull(tokens, "tokens");
    this.profile = Objects.requireNonNull(profile, "profile");
  }

  @Override
  public Request authenticate(Route route, Response response) throws IOException {
    if (response.code() != 401 || hadEarlier401(response)) {
      return null;
    }
    Request request = response.request();
    if (request.body() != null && request.body().isOneShot()) {
      return null;
    }
    TokenvendInterceptor.Sent sent = request.tag(TokenvendInterceptor.Sent.class);
    if (sent == null) {
      Token token = tokens.getToken(profile);
      return TokenvendInterceptor.withToken(
          request,
          new TokenvendInterceptor.Sent(
              token, System.nanoTime() + TokenClient.DEFAULT_TIMEOUT.toNanos()));
    }
    String refused = sent.token().accessToken();
    Token fresh = tokens.reject(profile, refused, sent.left());
    if (fresh.accessToken().equals(refused)) {
      return null;
    }
    return TokenvendInterceptor.withToken(
        request, new TokenvendInterceptor.Sent(fresh, sent.deadlineNanos()));
  }

  /** Whether this call already got a 401 and retried; redirects before it do not count. */
  private static boolean hadEarlier401(Response response) {
    for (Response r = response.priorResponse(); r != null; r = r.priorResponse()) {
      if (r.code() == 401) {
        return true;
      }
    }
    return false;
  }
}
