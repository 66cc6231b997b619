package io.tokenvend.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

@ExtendWith(TokenvendServer.class)
class TokenClientTest {
  private static final String JWT = "[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+";

  private final TokenvendServer server;
  private final RpcCounter rpcs = new RpcCounter();
  private final MutableClock clock = new MutableClock();
  private TokenClient tokens;

  TokenClientTest(TokenvendServer server) {
    this.server = server;
  }

  @BeforeEach
  void connect() {
    tokens = TokenClient.builder().target(server.target()).intercept(rpcs).clock(clock).build();
  }

  @AfterEach
  void close() {
    tokens.close();
  }

  @Test
  void getTokenReturnsDemoJwtWithHeaders() throws Exception {
    Token t = tokens.getToken("demo");

    assertTrue(t.accessToken().matches(JWT), "not a JWT");
    assertEquals("Bearer", t.tokenType());
    assertEquals("demo", t.profile());
    long secondsLeft = Duration.between(Instant.now(), t.expiresAt()).toSeconds();
    // A 300 s token, possibly already cached by tokenvend for up to its refresh point.
    assertTrue(secondsLeft > 60 && secondsLeft <= 300, "expires in " + secondsLeft + " s");
    assertEquals("Bearer " + t.accessToken(), t.headers().get("authorization"));
  }

  @Test
  void secondCallIsServedFromTheLocalCache() throws Exception {
    Token first = tokens.getToken("demo");
    Token second = tokens.getToken("demo");

    assertSame(first, second);
    assertEquals(1, rpcs.count());
  }

  @Test
  void tokenNearExpiryIsReplaced() throws Exception {
    tokens.getToken("demo");
    clock.advance(Duration.ofSeconds(280)); // within the 60 s margin of every demo token
    tokens.getToken("demo");

    assertEquals(2, rpcs.count());
  }

  @Test
  void maxRefreshMarginCapsTheMargin() throws Exception {
    try (TokenClient capped =
        TokenClient.builder()
            .target(server.target())
            .intercept(rpcs)
            .clock(clock)
            .maxRefreshMargin(Duration.ofSeconds(5))
            .build()) {
      Token t = capped.getToken("demo");
      // 10 s left: inside a tenth of the lifetime, outside the 5 s cap.
      clock.advance(t.remaining(clock).minusSeconds(10));
      assertSame(t, capped.getToken("demo"));
      assertEquals(1, rpcs.count());

      clock.advance(Duration.ofSeconds(6));
      capped.getToken("demo");
      assertEquals(2, rpcs.count());
    }
  }

  @Test
  void minTtlBeyondTheCachedTokenAsksTokenvendWithIt() throws Exception {
    Token cached = tokens.getToken("demo");
    // Within what the copy has, but not with its margin (a tenth of 300 s) on top.
    Duration minTtl = cached.remaining(clock).minusSeconds(20).withNanos(0);
    Token t = tokens.getToken("demo", minTtl);

    assertTrue(t.remaining(clock).compareTo(minTtl) >= 0);
    assertEquals(2, rpcs.count());
    assertEquals(minTtl.getSeconds(), rpcs.sent().get(1).request().getMinTtl().getSeconds());
  }

  @Test
  void minTtlNearTheTokenLifetimeStillSucceeds() throws Exception {
    // Close to the 300 s a demo token lives: tokenvend replaces its copy if it must.
    Token t = tokens.getToken("demo", Duration.ofSeconds(250));

    assertTrue(Duration.between(Instant.now(), t.expiresAt()).toSeconds() >= 249);
  }

  @Test
  void minTtlLongerThanTokensLiveIsOutOfRange() throws Exception {
    TokenvendException e =
        assertThrows(
            TokenvendException.class, () -> tokens.getToken("demo", Duration.ofHours(1)));

    assertEquals(Status.Code.OUT_OF_RANGE, e.code());
  }

  @Test
  void unknownProfileIsNotFound() throws Exception {
    TokenvendException e =
        assertThrows(TokenvendException.class, () -> tokens.getToken("no-such-profile"));

    assertEquals(Status.Code.NOT_FOUND, e.code());
  }

  @Test
  void concurrentCallersShareOneRpc() throws Exception {
    int callers = 16;
    ExecutorService pool = Executors.newFixedThreadPool(callers);
    try {
      CountDownLatch go = new CountDownLatch(1);
      List<Future<Token>> results = new ArrayList<>();
      for (int i = 0; i < callers; i++) {
        results.add(
            pool.submit(
                () -> {
                  go.await();
                  return tokens.getToken("demo");
                }));
      }
      go.countDown();
      Set<String> seen = new HashSet<>();
      for (Future<Token> f : results) {
        seen.add(f.get().accessToken());
      }

      assertEquals(1, seen.size());
      assertEquals(1, rpcs.count());
    } finally {
      pool.shutdownNow();
    }
  }

  @Test
  void rejectReturnsANewTokenAndCachesIt() throws Exception {
    Token old = tokens.getToken("demo");
    Token fresh = tokens.reject("demo", old.accessToken());

    assertNotEquals(old.accessToken(), fresh.accessToken());
    assertSame(fresh, tokens.getToken("demo"));
    assertEquals(2, rpcs.count());

    // Reported again (a second request that failed with the old token): the newer local
    // copy answers, without another RPC.
    assertSame(fresh, tokens.reject("demo", old.accessToken()));
    assertEquals(2, rpcs.count());
  }

  @Test
  void rejectingAnOlderTokenReturnsTheCurrentOne() throws Exception {
    Token old = tokens.getToken("demo");
    Token current = tokens.reject("demo", old.accessToken());

    try (TokenClient other = TokenClient.create(server.target())) {
      // No local copy: tokenvend itself must not mint another token for the old one.
      assertEquals(current.accessToken(), other.reject("demo", old.accessToken()).accessToken());
    }
  }

  @Test
  void toStringNeverShowsTheToken() throws Exception {
    Token t = tokens.getToken("demo");

    assertFalse(t.toString().contains(t.accessToken()));
    assertTrue(t.toString().contains("demo"));
    assertFalse(tokens.toString().contains(t.accessToken()));
  }

  @Test
  void serviceAccountTokenFileIsSent(@TempDir Path dir) throws Exception {
    Path file = dir.resolve("token");
    Files.writeString(file, "sa-token\n");
    try (TokenClient withSa =
        TokenClient.builder().target(server.target()).serviceAccountTokenFile(file).build()) {
      assertEquals("demo", withSa.getToken("demo").profile());
    }
  }

  @Test
  void missingServiceAccountTokenFileFailsTheCall(@TempDir Path dir) throws Exception {
    try (TokenClient withSa =
        TokenClient.builder()
            .target(server.target())
            .serviceAccountTokenFile(dir.resolve("absent"))
            .build()) {
      TokenvendException e =
          assertThrows(TokenvendException.class, () -> withSa.getToken("demo"));

      assertEquals(Status.Code.UNAUTHENTICATED, e.code());
    }
  }
}
