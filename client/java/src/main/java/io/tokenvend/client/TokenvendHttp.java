package io.tokenvend.client;

import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.Locale;
import java.util.Map;

/**
 * Calls an upstream API with {@link java.net.http.HttpClient} and a token from tokenvend.
 *
 * <pre>{@code
 * HttpResponse<String> response = TokenvendHttp.send(
 *     http, HttpRequest.newBuilder(uri).build(), tokens, "jakamo", BodyHandlers.ofString());
 * }</pre>
 *
 * <p>The request is copied with every header of {@link AccessToken#headers()} set (replacing
 * any header of the same name). If the API answers 401, the token is reported with {@link
 * TokenClient#reject(String, String)} and the request is sent once more with the token
 * tokenvend returns then; a second 401 is returned as it is. The body publisher is subscribed
 * again for the retry, as {@code HttpClient} itself does on redirects: the {@code
 * BodyPublishers} of the JDK allow that, except {@code ofInputStream} with a supplier that
 * cannot supply a second stream.
 */
public final class TokenvendHttp {
  private TokenvendHttp() {}

  /**
   * Sends {@code request} with the headers of {@code profile}'s token, retrying once on 401.
   *
   * @throws TokenUnavailableException if tokenvend cannot supply a token
   */
  public static <T> HttpResponse<T> send(
      HttpClient client,
      HttpRequest request,
      TokenClient tokens,
      String profile,
      HttpResponse.BodyHandler<T> handler)
      throws IOException, InterruptedException {
    AccessToken token = token(() -> tokens.getToken(profile), profile);
    HttpResponse<T> response = client.send(withToken(request, token), handler);
    if (response.statusCode() != 401) {
      return response;
    }
    AccessToken fresh = token(() -> tokens.reject(profile, token.accessToken()), profile);
    if (fresh.accessToken().equals(token.accessToken())) {
      return response; // tokenvend has no other token: the same request would fail the same way
    }
    return client.send(withToken(request, fresh), handler);
  }

  /**
   * Returns a copy of {@code request} carrying every header of {@code token}, replacing any
   * header of the same name (compared case-insensitively).
   */
  public static HttpRequest withToken(HttpRequest request, AccessToken token) {
    Map<String, String> headers = token.headers();
    HttpRequest.Builder b =
        HttpRequest.newBuilder(
            request, (name, value) -> !headers.containsKey(name.toLowerCase(Locale.ROOT)));
    headers.forEach(b::setHeader);
    return b.build();
  }

  private interface TokenCall {
    AccessToken get();
  }

  private static AccessToken token(TokenCall call, String profile) throws IOException {
    try {
      return call.get();
    } catch (StatusRuntimeException e) {
      throw new TokenUnavailableException(profile, e);
    }
  }
}
