package io.tokenvend.client.spring;

import io.tokenvend.client.Token;
import io.tokenvend.client.TokenClient;
import io.tokenvend.client.TokenvendException;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.function.Supplier;
import org.springframework.web.reactive.function.client.ClientRequest;
import org.springframework.web.reactive.function.client.ClientResponse;
import org.springframework.web.reactive.function.client.ExchangeFilterFunction;
import org.springframework.web.reactive.function.client.ExchangeFunction;
import org.springframework.web.reactive.function.client.WebClientRequestException;
import reactor.core.publisher.Mono;

/**
 * An {@link ExchangeFilterFunction} for {@code WebClient} that puts the headers of a tokenvend
 * profile's token on every request and, on HTTP 401, reports the token and sends the request
 * once more with the new one. A second 401 is passed on as is.
 *
 * <pre>{@code
 * WebClient api = WebClient.builder()
 *     .baseUrl("https://api.example.com")
 *     .filter(new TokenvendExchangeFilter(tokens, "jakamo"))
 *     .build();
 * }</pre>
 *
 * <p>It never blocks: tokens come from {@link TokenClient#getTokenAsync}, and cancelling the
 * exchange (a {@code timeout()} on the result, a disposed subscription) stops the wait. The
 * wait is also bounded by the request attribute {@link
 * TokenvendRequestInterceptor#TIMEOUT_ATTRIBUTE} when set, else by the timeout given here, else
 * by the client's default (10 s). If tokenvend cannot supply a token, the exchange fails with
 * a {@link WebClientRequestException} whose cause is the {@link TokenvendException}.
 */
public final class TokenvendExchangeFilter implements ExchangeFilterFunction {
  private final TokenClient tokens;
  private final String profile;
  private final Duration timeout;

  /** Uses {@code profile}'s tokens, waiting for one at most the client's default timeout. */
  public TokenvendExchangeFilter(TokenClient tokens, String profile) {
    this(tokens, profile, null);
  }

  /** Uses {@code profile}'s tokens, waiting for one at most {@code timeout} (null: default). */
  public TokenvendExchangeFilter(TokenClient tokens, String profile, Duration timeout) {
    this.tokens = Objects.requireNonNull(tokens, "tokens");
    this.profile = Objects.requireNonNull(profile, "profile");
    this.timeout = timeout;
  }

  @Override
  public Mono<ClientResponse> filter(ClientRequest request, ExchangeFunction next) {
    Duration bound =
        TokenvendRequestInterceptor.timeoutOf(
            request.attribute(TokenvendRequestInterceptor.TIMEOUT_ATTRIBUTE).orElse(null),
            timeout);
    return token(request, () -> tokens.getTokenAsync(profile, Duration.ZERO, bound))
        .flatMap(
            token ->
                next.exchange(withToken(request, token))
                    .flatMap(
                        response -> {
                          if (response.statusCode().value() != 401) {
                            return Mono.just(response);
                          }
                          return token(
                                  request,
                                  () -> tokens.rejectAsync(profile, token.accessToken(), bound))
                              .onErrorResume(e -> response.releaseBody().then(Mono.error(e)))
                              .flatMap(
                                  fresh ->
                                      fresh.accessToken().equals(token.accessToken())
                                          ? Mono.just(response)
                                          : response
                                              .releaseBody()
                                              .then(next.exchange(withToken(request, fresh))));
                        }));
  }

  private static Mono<Token> token(ClientRequest request, Supplier<CompletableFuture<Token>> call) {
    return Mono.fromFuture(call)
        .onErrorMap(
            TokenvendException.class,
            e -> new WebClientRequestException(e, request.method(), request.url(), request.headers()));
  }

  private static ClientRequest withToken(ClientRequest request, Token token) {
    return ClientRequest.from(request).headers(h -> token.headers().forEach(h::set)).build();
  }
}
