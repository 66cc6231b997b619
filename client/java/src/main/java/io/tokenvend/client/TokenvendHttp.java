package io.tokenvend.client;

import java.io.IOException;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.time.Duration;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

/**
 * Calls an upstream API with {@link java.net.http.HttpClient} and a token from tokenvend.
 *
 * <pre>{@code
 * HttpResponse<String> response = TokenvendHttp.send(
 *     http, HttpRequest.newBuilder(uri).build(), tokens, "jakamo", BodyHandlers.ofString());
 * }</pre>
 *
 * <p>The request is copied with every header of {@link Token#headers()} set (replacing any
 * header of the same name). If the API answers 401, the token is reported with {@link
 * TokenClient#reject(String, String)} and the request is sent once more with the token
 * tokenvend returns then; a second 401 is returned as it is. The body publisher is subscribed
 * again for the retry, as {@code HttpClient} itself does on redirects: the {@code
 * BodyPublishers} of the JDK allow that, except {@code ofInputStream} with a supplier that
 * cannot supply a second stream.
 *
 * <p>The request's {@link HttpRequest#timeout()} bounds the whole call: the wait for a token
 * takes from it, and the HTTP exchange gets what is left. Without one, the token wait is the
 * {@link TokenClient}'s default (10 s).
 */
public final class TokenvendHttp {
  private TokenvendHttp() {}

  /**
   * Sends {@code request} with the headers of {@code profile}'s token, retrying once on 401.
   *
   * @throws TokenvendException if tokenvend cannot supply a token in time
   * @throws HttpTimeoutException if the request's timeout passes
   */
  public static <T> HttpResponse<T> send(
      HttpClient client,
      HttpRequest request,
      TokenClient tokens,
      String profile,
      HttpResponse.BodyHandler<T> handler)
      throws IOException, InterruptedException {
    Budget budget = new Budget(request);
    Token token = tokens.getToken(profile, Duration.ZERO, budget.left());
    HttpResponse<T> response = client.send(budget.request(request, token), handler);
    if (response.statusCode() != 401) {
      return response;
    }
    Token fresh = tokens.reject(profile, token.accessToken(), budget.left());
    if (fresh.accessToken().equals(token.accessToken())) {
      return response; // tokenvend has no other token: the same request would fail the same way
    }
    return client.send(budget.request(request, fresh), handler);
  }

  /**
   * Like {@link #send}, without blocking: {@link HttpClient#sendAsync} with the token, retried
   * once on 401. The future fails with a {@link TokenvendException} when tokenvend cannot
   * supply a token, as {@code sendAsync} fails with an {@link IOException}.
   */
  public static <T> CompletableFuture<HttpResponse<T>> sendAsync(
      HttpClient client,
      HttpRequest request,
      TokenClient tokens,
      String profile,
      HttpResponse.BodyHandler<T> handler) {
    Budget budget = new Budget(request);
    CompletableFuture<HttpResponse<T>> result = new CompletableFuture<>();
    tokens
        .getTokenAsync(profile, Duration.ZERO, budget.leftOrNull())
        .thenCompose(
            token ->
                budget
                    .requestAsync(request, token)
                    .thenCompose(r -> client.sendAsync(r, handler))
                    .thenCompose(
                        response -> {
                          if (response.statusCode() != 401) {
                            return CompletableFuture.completedFuture(response);
                          }
                          return tokens
                              .rejectAsync(profile, token.accessToken(), budget.leftOrNull())
                              .thenCompose(
                                  fresh ->
                                      fresh.accessToken().equals(token.accessToken())
                                          ? CompletableFuture.completedFuture(response)
                                          : budget
                                              .requestAsync(request, fresh)
                                              .thenCompose(r -> client.sendAsync(r, handler)));
                        }))
        .whenComplete(
            (response, err) -> {
              if (err != null) {
                // As sendAsync does: the IOException itself, not a CompletionException.
                result.completeExceptionally(TokenvendException.unwrap(err));
              } else {
                result.complete(response);
              }
            });
    return result;
  }

  /**
   * Returns a copy of {@code request} carrying every header of {@code token}, replacing any
   * header of the same name (compared case-insensitively).
   */
  public static HttpRequest withToken(HttpRequest request, Token token) {
    return builderWithToken(request, token).build();
  }

  private static HttpRequest.Builder builderWithToken(HttpRequest request, Token token) {
    Map<String, String> headers = token.headers();
    HttpRequest.Builder b =
        HttpRequest.newBuilder(
            request, (name, value) -> !headers.containsKey(name.toLowerCase(Locale.ROOT)));
    headers.forEach(b::setHeader);
    return b;
  }

  /** What is left of the request's timeout, if it has one. */
  private static final class Budget {
    private final long deadline; // System.nanoTime() based; 0 without a timeout
    private final boolean bounded;

    Budget(HttpRequest request) {
      bounded = request.timeout().isPresent();
      deadline = bounded ? System.nanoTime() + request.timeout().get().toNanos() : 0;
    }

    /** The time left (null: no timeout), or a timeout exception once it has passed. */
    Duration left() throws HttpTimeoutException {
      if (!bounded) {
        return null;
      }
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        throw new HttpTimeoutException("request timed out");
      }
      return Duration.ofNanos(left);
    }

    Duration leftOrNull() {
      if (!bounded) {
        return null;
      }
      long left = deadline - System.nanoTime();
      return Duration.ofNanos(Math.max(left, 1));
    }

    /** The request with the token, its timeout shortened by the time already spent. */
    HttpRequest request(HttpRequest request, Token token) throws HttpTimeoutException {
      HttpRequest.Builder b = builderWithToken(request, token);
      Duration left = left();
      if (left != null) {
        b.timeout(left);
      }
      return b.build();
    }

    CompletableFuture<HttpRequest> requestAsync(HttpRequest request, Token token) {
      try {
        return CompletableFuture.completedFuture(request(request, token));
      } catch (HttpTimeoutException e) {
        return CompletableFuture.failedFuture(e);
      }
    }
  }
}
