package io.tokenvend.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.tokenvend.client.spring.TokenvendExchangeFilter;
import io.tokenvend.client.spring.TokenvendRequestInterceptor;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Nested;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;
import org.springframework.http.ResponseEntity;
import org.springframework.web.client.ResourceAccessException;
import org.springframework.web.client.RestClient;
import org.springframework.web.client.RestTemplate;
import org.springframework.web.reactive.function.client.ClientResponse;
import org.springframework.web.reactive.function.client.WebClient;
import org.springframework.web.reactive.function.client.WebClientRequestException;
import reactor.core.publisher.Mono;

/** The Spring adapters with real RestClient, RestTemplate and WebClient, against tokenvend. */
@ExtendWith(TokenvendServer.class)
class SpringAdaptersTest {
  private final TokenvendServer server;
  private final RpcCounter rpcs = new RpcCounter();
  private TokenClient tokens;

  SpringAdaptersTest(TokenvendServer server) {
    this.server = server;
  }

  @BeforeEach
  void connect() {
    tokens = TokenClient.builder().target(server.target()).intercept(rpcs).build();
  }

  @AfterEach
  void close() {
    tokens.close();
  }

  private static void assertRetriedWithNewToken(List<Upstream.Seen> seen, TokenClient tokens)
      throws Exception {
    assertEquals(2, seen.size());
    assertNotEquals(seen.get(0).authorization(), seen.get(1).authorization());
    assertEquals("Bearer " + tokens.getToken("demo").accessToken(), seen.get(1).authorization());
  }

  private static long millisSince(long start) {
    return TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
  }

  @Nested
  class RestClients {
    private RestClient rest(TokenClient tokens, String profile) {
      return RestClient.builder()
          .requestInterceptor(new TokenvendRequestInterceptor(tokens, profile))
          .build();
    }

    private int status(RestClient rest, Upstream api) {
      return rest.get().uri(api.uri()).exchange((req, res) -> res.getStatusCode().value());
    }

    @Test
    void sendsTheTokenHeaders() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        assertEquals(200, status(rest(tokens, "demo"), api));
        assertEquals(
            tokens.getToken("demo").headers().get("authorization"),
            api.requests().get(0).authorization());
      }
    }

    @Test
    void conformance_http_401_retried_once_rest_client() throws Exception {
      try (Upstream api = Upstream.refusingFirst()) {
        String body =
            rest(tokens, "demo").post().uri(api.uri()).body("{\"order\":42}").retrieve().body(String.class);

        assertEquals("ok", body);
        assertRetriedWithNewToken(api.requests(), tokens);
        assertEquals("{\"order\":42}", api.requests().get(1).body());
      }
    }

    @Test
    void conformance_always_401_bounded_rest_client() throws Exception {
      try (Upstream api = Upstream.alwaysRefusing()) {
        assertEquals(401, status(rest(tokens, "demo"), api));
        assertRetriedWithNewToken(api.requests(), tokens);
        assertEquals(2, rpcs.count());
      }
    }

    @Test
    void restTemplateRetriesOnceToo() throws Exception {
      RestTemplate template = new RestTemplate();
      template.getInterceptors().add(new TokenvendRequestInterceptor(tokens, "demo"));
      try (Upstream api = Upstream.refusingFirst()) {
        ResponseEntity<String> r = template.getForEntity(api.uri(), String.class);

        assertEquals(200, r.getStatusCode().value());
        assertRetriedWithNewToken(api.requests(), tokens);
      }
    }

    @Test
    void conformance_error_categories_rest_client() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        ResourceAccessException e =
            assertThrows(ResourceAccessException.class, () -> status(rest(tokens, "nope"), api));

        TokenvendException cause = assertInstanceOf(TokenvendException.class, e.getCause());
        assertEquals(Status.Code.NOT_FOUND, cause.code());
        assertFalse(cause.retryable());
        assertEquals(0, api.requests().size());
      }
    }

    @Test
    void conformance_deadline_bounds_fetch_rest_client() throws Exception {
      try (BlackHole hole = new BlackHole();
          TokenClient stuck = TokenClient.create(hole.target())) {
        RestClient rest = rest(stuck, "demo");
        long start = System.nanoTime();
        ResourceAccessException e =
            assertThrows(
                ResourceAccessException.class,
                () ->
                    rest.get()
                        .uri("http://127.0.0.1:9/")
                        .attribute(TokenvendRequestInterceptor.TIMEOUT_ATTRIBUTE, Duration.ofSeconds(1))
                        .retrieve()
                        .toBodilessEntity());

        assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
        TokenvendException cause = TokenvendException.in(e).orElseThrow();
        assertEquals(Status.Code.DEADLINE_EXCEEDED, cause.code());
        assertTrue(cause.retryable());
        hole.hangUp(); // ends the RPC, so that closing the client does not wait for it
      }
    }
  }

  @Nested
  class WebClients {
    private WebClient web(TokenClient tokens, String profile) {
      return WebClient.builder().filter(new TokenvendExchangeFilter(tokens, profile)).build();
    }

    private int status(WebClient web, Upstream api) {
      return web.get()
          .uri(api.uri())
          .exchangeToMono(r -> r.releaseBody().thenReturn(r.statusCode().value()))
          .block(Duration.ofSeconds(10));
    }

    @Test
    void sendsTheTokenHeaders() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        assertEquals(200, status(web(tokens, "demo"), api));
        assertEquals(
            tokens.getToken("demo").headers().get("authorization"),
            api.requests().get(0).authorization());
      }
    }

    @Test
    void conformance_http_401_retried_once_web_client() throws Exception {
      try (Upstream api = Upstream.refusingFirst()) {
        String body =
            web(tokens, "demo")
                .post()
                .uri(api.uri())
                .bodyValue("{\"order\":42}")
                .retrieve()
                .bodyToMono(String.class)
                .block(Duration.ofSeconds(10));

        assertEquals("ok", body);
        assertRetriedWithNewToken(api.requests(), tokens);
        assertEquals("{\"order\":42}", api.requests().get(1).body());
      }
    }

    @Test
    void conformance_always_401_bounded_web_client() throws Exception {
      try (Upstream api = Upstream.alwaysRefusing()) {
        assertEquals(401, status(web(tokens, "demo"), api));
        assertRetriedWithNewToken(api.requests(), tokens);
        assertEquals(2, rpcs.count());
      }
    }

    @Test
    void conformance_error_categories_web_client() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        WebClientRequestException e =
            assertThrows(WebClientRequestException.class, () -> status(web(tokens, "nope"), api));

        TokenvendException cause = assertInstanceOf(TokenvendException.class, e.getCause());
        assertEquals(Status.Code.NOT_FOUND, cause.code());
        assertFalse(cause.retryable());
        assertEquals(0, api.requests().size());
      }
    }

    @Test
    void conformance_deadline_bounds_fetch_web_client() throws Exception {
      try (BlackHole hole = new BlackHole();
          TokenClient stuck = TokenClient.create(hole.target())) {
        WebClient web = web(stuck, "demo");
        long start = System.nanoTime();
        // Assembling and subscribing never blocks on tokenvend ...
        Mono<ClientResponse> exchange =
            web.get()
                .uri("http://127.0.0.1:9/")
                .attribute(TokenvendRequestInterceptor.TIMEOUT_ATTRIBUTE, Duration.ofSeconds(1))
                .exchangeToMono(Mono::just);
        var subscribed = exchange.toFuture();
        assertTrue(millisSince(start) < 200, "blocked for " + millisSince(start) + " ms");

        // ... and the fetch ends with the request's timeout, as a WebClient error.
        Exception e = assertThrows(Exception.class, () -> subscribed.get(5, TimeUnit.SECONDS));
        assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
        assertInstanceOf(WebClientRequestException.class, e.getCause());
        TokenvendException cause = TokenvendException.in(e).orElseThrow();
        assertEquals(Status.Code.DEADLINE_EXCEEDED, cause.code());
        assertTrue(cause.retryable());
        hole.hangUp(); // ends the RPC, so that closing the client does not wait for it
      }
    }

    @Test
    void conformance_deadline_bounds_fetch_web_client_cancellation() throws Exception {
      try (BlackHole hole = new BlackHole();
          TokenClient stuck = TokenClient.create(hole.target())) {
        long start = System.nanoTime();
        Exception e =
            assertThrows(
                Exception.class,
                () ->
                    web(stuck, "demo")
                        .get()
                        .uri("http://127.0.0.1:9/")
                        .retrieve()
                        .toBodilessEntity()
                        .timeout(Duration.ofSeconds(1))
                        .block());

        assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
        assertInstanceOf(TimeoutException.class, e.getCause());
        hole.hangUp(); // ends the RPC, so that closing the client does not wait for it
      }
    }
  }
}
