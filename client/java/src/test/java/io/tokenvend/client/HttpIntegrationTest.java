package io.tokenvend.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.Status;
import java.io.IOException;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;
import okio.BufferedSink;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Nested;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/** The 401 behaviour of both HTTP integrations, against the real tokenvend. */
@ExtendWith(TokenvendServer.class)
class HttpIntegrationTest {
  private final TokenvendServer server;
  private TokenClient tokens;

  HttpIntegrationTest(TokenvendServer server) {
    this.server = server;
  }

  @BeforeEach
  void connect() {
    tokens = TokenClient.create(server.target());
  }

  @AfterEach
  void close() {
    tokens.close();
  }

  /** What tokenvend hands out now, asked by a client without a local copy. */
  private String currentToken() throws Exception {
    try (TokenClient fresh = TokenClient.create(server.target())) {
      return fresh.getToken("demo").accessToken();
    }
  }

  private static void assertRetriedWithNewToken(List<Upstream.Seen> seen, String current) {
    assertEquals(2, seen.size());
    assertNotEquals(seen.get(0).authorization(), seen.get(1).authorization());
    assertEquals("Bearer " + current, seen.get(1).authorization());
  }

  @Nested
  class JavaNetHttp {
    private final HttpClient http = HttpClient.newHttpClient();

    private HttpResponse<String> send(HttpRequest request) throws Exception {
      return TokenvendHttp.send(
          http, request, tokens, "demo", HttpResponse.BodyHandlers.ofString());
    }

    @Test
    void sendsTheTokenHeaders() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        HttpResponse<String> r = send(HttpRequest.newBuilder(api.uri()).build());

        assertEquals(200, r.statusCode());
        assertEquals(1, api.requests().size());
        assertEquals(
            tokens.getToken("demo").headers().get("authorization"),
            api.requests().get(0).authorization());
      }
    }

    @Test
    void replacesAnAuthorizationHeaderAlreadyOnTheRequest() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        send(HttpRequest.newBuilder(api.uri()).header("Authorization", "Basic c3RhbGU=").build());

        String expected = "Bearer " + tokens.getToken("demo").accessToken();
        assertEquals(expected, api.requests().get(0).authorization());
      }
    }

    @Test
    void retriesOnceWithANewTokenAfter401() throws Exception {
      try (Upstream api = Upstream.refusingFirst()) {
        HttpResponse<String> r = send(HttpRequest.newBuilder(api.uri()).build());

        assertEquals(200, r.statusCode());
        assertRetriedWithNewToken(api.requests(), currentToken());
      }
    }

    @Test
    void replaysTheBodyOnTheRetry() throws Exception {
      try (Upstream api = Upstream.refusingFirst()) {
        HttpRequest post =
            HttpRequest.newBuilder(api.uri())
                .POST(HttpRequest.BodyPublishers.ofString("{\"order\":42}"))
                .build();
        assertEquals(200, send(post).statusCode());

        assertEquals("{\"order\":42}", api.requests().get(0).body());
        assertEquals("{\"order\":42}", api.requests().get(1).body());
      }
    }

    @Test
    void returnsAPersistent401AfterOneRetry() throws Exception {
      try (Upstream api = Upstream.alwaysRefusing()) {
        HttpResponse<String> r = send(HttpRequest.newBuilder(api.uri()).build());

        assertEquals(401, r.statusCode());
        assertEquals("refused", r.body());
        assertRetriedWithNewToken(api.requests(), currentToken());
      }
    }

    @Test
    void sendAsyncRetriesOnceWithANewTokenAfter401() throws Exception {
      try (Upstream api = Upstream.refusingFirst()) {
        HttpResponse<String> r =
            TokenvendHttp.sendAsync(
                    http,
                    HttpRequest.newBuilder(api.uri()).build(),
                    tokens,
                    "demo",
                    HttpResponse.BodyHandlers.ofString())
                .get(10, TimeUnit.SECONDS);

        assertEquals(200, r.statusCode());
        assertRetriedWithNewToken(api.requests(), currentToken());
      }
    }

    @Test
    void sendAsyncFailsWithTheTokenvendExceptionItself() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        CompletableFuture<HttpResponse<Void>> f =
            TokenvendHttp.sendAsync(
                http,
                HttpRequest.newBuilder(api.uri()).build(),
                tokens,
                "no-such-profile",
                HttpResponse.BodyHandlers.discarding());
        ExecutionException e =
            assertThrows(ExecutionException.class, () -> f.get(10, TimeUnit.SECONDS));

        TokenvendException cause = assertInstanceOf(TokenvendException.class, e.getCause());
        assertEquals(Status.Code.NOT_FOUND, cause.code());
        assertEquals(0, api.requests().size());
      }
    }

    @Test
    void unknownProfileFailsAsIOExceptionWithTheGrpcCode() throws Exception {
      try (Upstream api = Upstream.accepting()) {
        TokenvendException e =
            assertThrows(
                TokenvendException.class,
                () ->
                    TokenvendHttp.send(
                        http,
                        HttpRequest.newBuilder(api.uri()).build(),
                        tokens,
                        "no-such-profile",
                        HttpResponse.BodyHandlers.discarding()));

        assertEquals(Status.Code.NOT_FOUND, e.code());
        assertEquals(0, api.requests().size());
      }
    }
  }

  @Nested
  class OkHttp {
    private OkHttpClient http;

    @BeforeEach
    void build() {
      http =
          new OkHttpClient.Builder()
              .addInterceptor(new TokenvendInterceptor(tokens, "demo"))
              .authenticator(new TokenvendAuthenticator(tokens, "demo"))
              .build();
    }

    @AfterEach
    void shutdown() {
      http.dispatcher().executorService().shutdown();
      http.connectionPool().evictAll();
    }

    private Response get(Upstream api) throws IOException {
      return http.newCall(new Request.Builder().url(api.uri().toString()).build()).execute();
    }

    @Test
    void sendsTheTokenHeaders() throws Exception {
      try (Upstream api = Upstream.accepting();
          Response r = get(api)) {
        assertEquals(200, r.code());
        assertEquals(1, api.requests().size());
        assertEquals(
            tokens.getToken("demo").headers().get("authorization"),
            api.requests().get(0).authorization());
      }
    }

    @Test
    void retriesOnceWithANewTokenAfter401() throws Exception {
      try (Upstream api = Upstream.refusingFirst();
          Response r = get(api)) {
        assertEquals(200, r.code());
        assertRetriedWithNewToken(api.requests(), currentToken());
      }
    }

    @Test
    void returnsAPersistent401AfterOneRetry() throws Exception {
      try (Upstream api = Upstream.alwaysRefusing();
          Response r = get(api)) {
        assertEquals(401, r.code());
        assertEquals("refused", r.body().string());
        assertRetriedWithNewToken(api.requests(), currentToken());
      }
    }

    @Test
    void doesNotRetryAOneShotBody() throws Exception {
      RequestBody oneShot =
          new RequestBody() {
            @Override
            public MediaType contentType() {
              return MediaType.get("application/json");
            }

            @Override
            public void writeTo(BufferedSink sink) throws IOException {
              sink.writeUtf8("{}");
            }

            @Override
            public boolean isOneShot() {
              return true;
            }
          };
      try (Upstream api = Upstream.refusingFirst();
          Response r =
              http.newCall(new Request.Builder().url(api.uri().toString()).post(oneShot).build())
                  .execute()) {
        assertEquals(401, r.code());
        assertEquals(1, api.requests().size());
      }
    }

    @Test
    void unknownProfileFailsAsIOExceptionWithTheGrpcCode() throws Exception {
      OkHttpClient wrong =
          new OkHttpClient.Builder()
              .addInterceptor(new TokenvendInterceptor(tokens, "no-such-profile"))
              .build();
      try (Upstream api = Upstream.accepting()) {
        Request request = new Request.Builder().url(api.uri().toString()).build();
        TokenvendException e =
            assertThrows(TokenvendException.class, () -> wrong.newCall(request).execute());

        assertEquals(Status.Code.NOT_FOUND, e.code());
        assertEquals(0, api.requests().size());
      }
    }
  }
}
