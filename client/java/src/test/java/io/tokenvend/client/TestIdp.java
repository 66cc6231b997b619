package io.tokenvend.client;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An OAuth 2.0 token endpoint for tokenvend's {@code client_credentials} profiles: opaque
 * tokens living as long as each client id is set to, and a count of requests per client id.
 */
final class TestIdp implements AutoCloseable {
  private final HttpServer server;
  private final Map<String, Integer> lifetimes = new ConcurrentHashMap<>();
  private final Map<String, AtomicInteger> requests = new ConcurrentHashMap<>();
  private final SecureRandom random = new SecureRandom();

  TestIdp() throws IOException {
    server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
    server.createContext(
        "/token",
        exchange -> {
          String form;
          try (InputStream in = exchange.getRequestBody()) {
            form = new String(in.readNBytes(64 * 1024), StandardCharsets.UTF_8);
          }
          String clientId = field(form, "client_id");
          Integer lifetime = clientId == null ? null : lifetimes.get(clientId);
          int status;
          String body;
          if (lifetime == null) {
            status = 401;
            body = "{\"error\":\"invalid_client\"}";
          } else {
            requests.computeIfAbsent(clientId, k -> new AtomicInteger()).incrementAndGet();
            byte[] raw = new byte[16];
            random.nextBytes(raw);
            status = 200;
            body =
                "{\"access_token\":\"tok-"
                    + HexFormat.of().formatHex(raw)
                    + "\",\"token_type\":\"Bearer\",\"expires_in\":"
                    + lifetime
                    + "}";
          }
          byte[] reply = body.getBytes(StandardCharsets.UTF_8);
          exchange.getResponseHeaders().set("Content-Type", "application/json");
          exchange.sendResponseHeaders(status, reply.length);
          try (OutputStream out = exchange.getResponseBody()) {
            out.write(reply);
          }
        });
    server.start();
  }

  /** Issues tokens living {@code seconds} to {@code clientId}. */
  TestIdp client(String clientId, int seconds) {
    lifetimes.put(clientId, seconds);
    return this;
  }

  /** Token requests {@code clientId} made. */
  int requests(String clientId) {
    AtomicInteger n = requests.get(clientId);
    return n == null ? 0 : n.get();
  }

  /** A profile for tokenvend's configuration, indented under {@code profiles:}. */
  String profile(String name, String clientId, String extra) {
    return "  "
        + name
        + ":\n    token_url: http://127.0.0.1:"
        + server.getAddress().getPort()
        + "/token\n    client_id: "
        + clientId
        + "\n    client_secret: { value: not-a-real-secret }\n"
        + extra;
  }

  private static String field(String form, String name) {
    for (String pair : form.split("&")) {
      int eq = pair.indexOf('=');
      if (eq > 0 && pair.substring(0, eq).equals(name)) {
        return URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8);
      }
    }
    return null;
  }

  @Override
  public void close() {
    server.stop(0);
  }
}
