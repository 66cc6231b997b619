package io.tokenvend.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * The conformance scenarios every tokenvend client passes (client/README.md), one test (or
 * more) per id, against the real tokenvend binary: {@code serve --dev} for the demo profile
 * (300 s tokens), and {@code serve --config} with a token endpoint of our own for short-lived
 * tokens and for counting what the identity provider is asked.
 */
@ExtendWith(TokenvendServer.class)
class ConformanceTest {
  /** Lifetime of the {@code short} profile's tokens, in seconds. */
  private static final int SHORT_LIFETIME = 8;

  @TempDir static Path dir;
  private static TestIdp idp;
  private static TokenvendProcess configured;

  private final TokenvendServer dev;
  private final RpcCounter rpcs = new RpcCounter();
  private final MutableClock clock = new MutableClock();
  private final List<AutoCloseable> closing = new ArrayList<>();

  ConformanceTest(TokenvendServer dev) {
    this.dev = dev;
  }

  @BeforeAll
  static void startConfigured() throws Exception {
    idp = new TestIdp().client("short", SHORT_LIFETIME).client("refused", 300);
    configured =
        TokenvendProcess.config(
            "conformance",
            "server:\n  shutdown_delay: 0s\n  reload_interval: 0s\nprofiles:\n"
                + idp.profile("short", "short", "")
                // Replaces every reported token, so that only the client bounds the requests.
                + idp.profile("refused", "refused", "    rejected_token_min_interval: 0s\n"),
            dir);
  }

  @AfterAll
  static void stopConfigured() {
    configured.close();
    idp.close();
  }

  @AfterEach
  void closeAll() throws Exception {
    for (AutoCloseable c : closing) {
      c.close();
    }
  }

  private <T extends AutoCloseable> T closing(T c) {
    closing.add(0, c);
    return c;
  }

  /** A client of {@code target} that counts its RPCs and runs on the test's clock. */
  private TokenClient client(String target) {
    return closing(TokenClient.builder().target(target).intercept(rpcs).clock(clock).build());
  }

  private static <T> List<T> concurrently(int n, Callable<T> call) throws Exception {
    ExecutorService pool = Executors.newFixedThreadPool(n);
    try {
      CountDownLatch go = new CountDownLatch(1);
      List<Future<T>> futures = new ArrayList<>();
      for (int i = 0; i < n; i++) {
        futures.add(
            pool.submit(
                () -> {
                  go.await();
                  return call.call();
                }));
      }
      go.countDown();
      List<T> results = new ArrayList<>();
      for (Future<T> f : futures) {
        results.add(f.get(30, TimeUnit.SECONDS));
      }
      return results;
    } finally {
      pool.shutdownNow();
    }
  }

  private static void eventually(String what, BooleanSupplier condition) throws Exception {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        throw new AssertionError("not within 10 s: " + what);
      }
      Thread.sleep(20);
    }
  }

  private static long millisSince(long start) {
    return TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start);
  }

  @Test
  void conformance_cache_hit_no_rpc() throws Exception {
    TokenClient tokens = client(dev.target());
    Token first = tokens.getToken("demo");
    Token second = tokens.getToken("demo");

    assertSame(first, second);
    assertEquals(1, rpcs.count());
  }

  @Test
  void conformance_single_flight() throws Exception {
    TokenClient tokens = client(dev.target());
    List<Token> got = concurrently(32, () -> tokens.getToken("demo"));

    assertEquals(1, rpcs.count());
    assertEquals(1, got.stream().map(Token::accessToken).distinct().count());
  }

  @Test
  void conformance_reject_coalesced() throws Exception {
    TokenClient tokens = client(dev.target());
    Token old = tokens.getToken("demo");
    List<Token> fresh = concurrently(64, () -> tokens.reject("demo", old.accessToken()));

    assertTrue(rpcs.count() - 1 <= 2, (rpcs.count() - 1) + " RPCs for 64 rejects");
    Set<String> answers = new HashSet<>();
    fresh.forEach(t -> answers.add(t.accessToken()));
    assertEquals(1, answers.size());
    assertNotEquals(old.accessToken(), fresh.get(0).accessToken());
    // Reported once more, later: the local copy is newer, so no RPC at all.
    int before = rpcs.count();
    assertEquals(fresh.get(0).accessToken(), tokens.reject("demo", old.accessToken()).accessToken());
    assertEquals(before, rpcs.count());
  }

  @Test
  void conformance_http_401_retried_once() throws Exception {
    TokenClient tokens = client(dev.target());
    try (Upstream api = Upstream.refusingFirst()) {
      HttpResponse<String> r =
          TokenvendHttp.send(
              HttpClient.newHttpClient(),
              HttpRequest.newBuilder(api.uri()).build(),
              tokens,
              "demo",
              HttpResponse.BodyHandlers.ofString());

      assertEquals(200, r.statusCode());
      assertEquals(2, api.requests().size());
      assertNotEquals(api.requests().get(0).authorization(), api.requests().get(1).authorization());
      assertEquals(
          "Bearer " + tokens.getToken("demo").accessToken(), api.requests().get(1).authorization());
      assertEquals(2, rpcs.count()); // the first token, and the one for the reported token
    }
  }

  @Test
  void conformance_always_401_bounded() throws Exception {
    TokenClient tokens = client(configured.target());
    HttpClient http = HttpClient.newHttpClient();
    try (Upstream api = Upstream.alwaysRefusing()) {
      Callable<Integer> call =
          () ->
              TokenvendHttp.send(
                      http,
                      HttpRequest.newBuilder(api.uri()).build(),
                      tokens,
                      "refused",
                      HttpResponse.BodyHandlers.discarding())
                  .statusCode();
      int calls = 5;
      for (int i = 0; i < calls; i++) {
        assertEquals(401, call.call());
      }
      assertEquals(2 * calls, api.requests().size(), "each call is retried once only");
      assertTrue(rpcs.count() <= 2 * calls, rpcs.count() + " RPCs for " + calls + " calls");
      assertTrue(idp.requests("refused") <= calls + 1, idp.requests("refused") + " IdP requests");

    }
    // Concurrent calls refused with the same token report it with one RPC between them.
    try (Upstream api = Upstream.alwaysRefusingSlowly()) {
      int rpcsBefore = rpcs.count();
      int idpBefore = idp.requests("refused");
      List<Integer> statuses =
          concurrently(
              20,
              () ->
                  TokenvendHttp.send(
                          http,
                          HttpRequest.newBuilder(api.uri()).build(),
                          tokens,
                          "refused",
                          HttpResponse.BodyHandlers.discarding())
                      .statusCode());

      assertTrue(statuses.stream().allMatch(s -> s == 401));
      assertEquals(40, api.requests().size());
      assertTrue(rpcs.count() - rpcsBefore <= 2, (rpcs.count() - rpcsBefore) + " RPCs for 20");
      assertTrue(idp.requests("refused") - idpBefore <= 2, "IdP requests not coalesced");
    }
  }

  @Test
  void conformance_deadline_bounds_fetch() throws Exception {
    try (BlackHole hole = new BlackHole()) {
      TokenClient tokens = client(hole.target());
      HttpRequest request =
          HttpRequest.newBuilder(URI.create("http://127.0.0.1:9/never"))
              .timeout(Duration.ofSeconds(1))
              .build();
      long start = System.nanoTime();
      TokenvendException e =
          assertThrows(
              TokenvendException.class,
              () ->
                  TokenvendHttp.send(
                      HttpClient.newHttpClient(),
                      request,
                      tokens,
                      "demo",
                      HttpResponse.BodyHandlers.discarding()));

      assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
      assertTrue(e instanceof IOException);
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
      assertTrue(e.retryable());
      assertTrue(hole.accepted() > 0, "the client never reached the listener");
    }
  }

  @Test
  void conformance_deadline_bounds_fetch_send_async() throws Exception {
    try (BlackHole hole = new BlackHole()) {
      TokenClient tokens = client(hole.target());
      HttpRequest request =
          HttpRequest.newBuilder(URI.create("http://127.0.0.1:9/never"))
              .timeout(Duration.ofSeconds(1))
              .build();
      long start = System.nanoTime();
      ExecutionException e =
          assertThrows(
              ExecutionException.class,
              () ->
                  TokenvendHttp.sendAsync(
                          HttpClient.newHttpClient(),
                          request,
                          tokens,
                          "demo",
                          HttpResponse.BodyHandlers.discarding())
                      .get(5, TimeUnit.SECONDS));

      assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
      TokenvendException cause = assertInstanceOf(TokenvendException.class, e.getCause());
      assertEquals(Status.Code.DEADLINE_EXCEEDED, cause.code());
      assertTrue(cause.retryable());
    }
  }

  @Test
  void conformance_deadline_bounds_fetch_okhttp() throws Exception {
    try (BlackHole hole = new BlackHole()) {
      TokenClient tokens = client(hole.target());
      OkHttpClient http =
          new OkHttpClient.Builder()
              .callTimeout(Duration.ofSeconds(1))
              .addInterceptor(new TokenvendInterceptor(tokens, "demo"))
              .authenticator(new TokenvendAuthenticator(tokens, "demo"))
              .build();
      long start = System.nanoTime();
      IOException e =
          assertThrows(
              IOException.class,
              () -> http.newCall(new Request.Builder().url("http://127.0.0.1:9/").build()).execute());

      assertTrue(millisSince(start) < 1500, "took " + millisSince(start) + " ms");
      // OkHttp may wrap it in its own "timeout" InterruptedIOException.
      TokenvendException cause = TokenvendException.in(e).orElseThrow(() -> e);
      assertTrue(cause.retryable());
      http.dispatcher().executorService().shutdown();
    }
  }

  @Test
  void conformance_deadline_bounds_fetch_default_is_10s_and_get_token_takes_a_timeout()
      throws Exception {
    try (BlackHole hole = new BlackHole()) {
      TokenClient tokens = client(hole.target());
      long start = System.nanoTime();
      TokenvendException e =
          assertThrows(
              TokenvendException.class,
              () -> tokens.getToken("demo", Duration.ZERO, Duration.ofMillis(300)));

      assertTrue(millisSince(start) < 800, "took " + millisSince(start) + " ms");
      assertEquals(Status.Code.DEADLINE_EXCEEDED, e.code());
      assertEquals(Duration.ofSeconds(10), TokenClient.DEFAULT_TIMEOUT);
    }
  }

  @Test
  void conformance_error_categories() throws Exception {
    TokenClient tokens = client(dev.target());
    TokenvendException unknown =
        assertThrows(TokenvendException.class, () -> tokens.getToken("no-such-profile"));
    assertEquals(Status.Code.NOT_FOUND, unknown.code());
    assertFalse(unknown.retryable());
    assertTrue(unknown.getMessage().contains("no-such-profile"), unknown.getMessage());

    TokenClient nowhere = client("127.0.0.1:" + TokenvendProcess.freePort());
    TokenvendException unreachable =
        assertThrows(TokenvendException.class, () -> nowhere.getToken("demo"));
    assertEquals(Status.Code.UNAVAILABLE, unreachable.code());
    assertTrue(unreachable.retryable());
    // The cause is in the message: grpc-java alone says only "io exception".
    assertTrue(unreachable.getMessage().contains("refused"), unreachable.getMessage());
  }

  @Test
  void conformance_refresh_margin_fraction() throws Exception {
    TokenClient tokens = client(configured.target());
    long start = System.nanoTime();
    Token first = tokens.getToken("short");
    double lifetime = first.remaining(clock).toMillis();
    assertTrue(lifetime > (SHORT_LIFETIME - 1) * 1000, "lifetime " + lifetime);

    // Past the first token's end, in a tight loop.
    Set<String> seen = new HashSet<>();
    long calls = 0;
    while (millisSince(start) < 1.15 * lifetime) {
      seen.add(tokens.getToken("short").accessToken());
      calls++;
    }

    List<RpcCounter.Sent> sent = rpcs.sent();
    for (RpcCounter.Sent s : sent) {
      assertFalse(s.request().hasMinTtl(), "the client sent a min_ttl of its own");
    }
    assertTrue(sent.size() >= 2, "never renewed");
    long secondAt = TimeUnit.NANOSECONDS.toMillis(sent.get(1).nanoTime() - start);
    assertTrue(secondAt >= 0.9 * lifetime - 50, "asked again at " + secondAt + " of " + lifetime);
    // Normally 2: tokenvend replaced the token at ~80 %, so the renewal at 90 % is a hit in its
    // cache. On a loaded machine its refresh may come late; the client then asks once a second.
    assertTrue(sent.size() <= 4, sent.size() + " RPCs for " + calls + " calls");
    assertTrue(seen.size() >= 2, "the copy was never replaced");
    assertTrue(idp.requests("short") <= 3, idp.requests("short") + " IdP requests");
  }

  @Test
  void conformance_refresh_margin_fraction_paced_when_tokenvend_has_nothing_newer()
      throws Exception {
    TokenClient tokens = client(dev.target());
    Token first = tokens.getToken("demo");
    // Into the copy's margin (a tenth of what it had left), while tokenvend, on the real
    // clock, still serves it as it is: each answer is again within the margin.
    clock.advance(first.remaining(clock).multipliedBy(95).dividedBy(100));

    long start = System.nanoTime();
    long calls = 0;
    while (millisSince(start) < 2500) {
      assertEquals(first.accessToken(), tokens.getToken("demo").accessToken());
      calls++;
    }

    int asks = rpcs.count() - 1;
    assertTrue(asks >= 1 && asks <= 4, asks + " RPCs in 2.5 s for " + calls + " calls");
    rpcs.sent().forEach(s -> assertFalse(s.request().hasMinTtl()));
  }

  @Test
  void conformance_watch_live_copy() throws Exception {
    TokenClient tokens = client(dev.target());
    tokens.watch("demo");
    eventually("the watch delivers a token", () -> tokens.cached("demo") != null);
    Token watched = tokens.cached("demo");
    for (int i = 0; i < 20; i++) {
      assertSame(watched, tokens.getToken("demo"));
    }
    assertEquals(0, rpcs.count());

    // Another client reports it: tokenvend replaces it and the stream brings the new one.
    try (TokenClient other = TokenClient.create(dev.target())) {
      other.reject("demo", watched.accessToken());
    }
    eventually(
        "the copy follows the replacement",
        () -> !tokens.cached("demo").accessToken().equals(watched.accessToken()));
    assertNotEquals(watched.accessToken(), tokens.getToken("demo").accessToken());
    assertEquals(0, rpcs.count());
  }

  @Test
  void conformance_watch_live_copy_reconnects_with_backoff() throws Exception {
    TokenvendProcess first = closing(TokenvendProcess.dev("watch-1"));
    TokenClient tokens = client(first.target());
    tokens.watch("demo");
    eventually("the watch delivers a token", () -> tokens.cached("demo") != null);
    Token before = tokens.cached("demo");

    first.close();
    // Another server on the same address, with an issuer of its own: new tokens.
    closing(TokenvendProcess.dev("watch-2", first.port()));
    eventually(
        "the watch reconnects",
        () -> !tokens.cached("demo").accessToken().equals(before.accessToken()));
    assertEquals(0, rpcs.count());
    assertTrue(rpcs.watches() >= 2 && rpcs.watches() < 30, rpcs.watches() + " streams opened");
  }

  @Test
  void conformance_stale_copy_while_unreachable() throws Exception {
    TokenvendProcess server = closing(TokenvendProcess.dev("stale"));
    TokenClient tokens = client(server.target());
    Token copy = tokens.getToken("demo");
    server.close();

    // Inside its margin, not expired: served although tokenvend cannot be asked.
    clock.advance(copy.remaining(clock).multipliedBy(95).dividedBy(100));
    assertEquals(copy.accessToken(), tokens.getToken("demo").accessToken());
    assertEquals(2, rpcs.count(), "it did try tokenvend");
    for (int i = 0; i < 50; i++) {
      tokens.getToken("demo");
    }
    assertTrue(rpcs.count() <= 3, rpcs.count() + " RPCs: an outage is not asked at every call");

    // Expired: never served.
    clock.advance(copy.remaining(clock).plusSeconds(1));
    TokenvendException e = assertThrows(TokenvendException.class, () -> tokens.getToken("demo"));
    assertEquals(Status.Code.UNAVAILABLE, e.code());
    assertTrue(e.retryable());
  }

  @Test
  void conformance_service_account_token() throws Exception {
    ServiceAccountIssuer issuer = new ServiceAccountIssuer();
    Path jwks = dir.resolve("jwks.json");
    Files.writeString(jwks, issuer.jwks());
    TokenvendProcess server =
        closing(
            TokenvendProcess.config(
                "service-account",
                "server:\n  shutdown_delay: 0s\n  reload_interval: 0s\n"
                    + "  auth:\n    service_account:\n      issuer: "
                    + ServiceAccountIssuer.ISSUER
                    + "\n      jwks_file: "
                    + jwks
                    + "\nprofiles:\n"
                    + idp.profile(
                        "only-b", "refused", "    allow: [\"system:serviceaccount:orders:b\"]\n"),
                dir));
    Path file = dir.resolve("sa-token");
    String a = issuer.token("orders", "a");
    Files.writeString(file, a + "\n");
    try (TokenClient tokens =
        TokenClient.builder().target(server.target()).serviceAccountTokenFile(file).build()) {
      // Sent and verified: identity a may not see the profile.
      TokenvendException refused =
          assertThrows(TokenvendException.class, () -> tokens.getToken("only-b"));
      assertEquals(Status.Code.NOT_FOUND, refused.code());
      assertFalse(refused.getMessage().contains(a));

      // Rotated (as the kubelet does): the new file is read and sent.
      FileTime old = Files.getLastModifiedTime(file);
      Files.writeString(file, issuer.token("orders", "b") + "\n");
      Files.setLastModifiedTime(file, FileTime.fromMillis(old.toMillis() + 2000));
      assertNotNull(tokens.getToken("only-b").accessToken());
    }
    try (TokenClient anonymous = TokenClient.create(server.target())) {
      TokenvendException e =
          assertThrows(TokenvendException.class, () -> anonymous.getToken("only-b"));
      assertEquals(Status.Code.UNAUTHENTICATED, e.code());
    }
  }
}
