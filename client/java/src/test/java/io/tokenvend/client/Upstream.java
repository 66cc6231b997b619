package io.tokenvend.client;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * A stand-in for the upstream API: answers 401 to the first {@code failures} requests and 200
 * after that, recording the Authorization header and body of each request.
 */
final class Upstream implements AutoCloseable {
  record Seen(String authorization, String body) {}

  private final HttpServer server;
  private final List<Seen> requests = new CopyOnWriteArrayList<>();
  private final ExecutorService pool;

  Upstream(int failures) throws IOException {
    this(failures, 0);
  }

  /** Answers each request after {@code delayMillis}, many at a time. */
  Upstream(int failures, long delayMillis) throws IOException {
    server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
    pool = Executors.newCachedThreadPool();
    server.setExecutor(pool);
    server.createContext(
        "/",
        exchange -> {
          String body;
          try (InputStream in = exchange.getRequestBody()) {
            body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
          }
          requests.add(new Seen(exchange.getRequestHeaders().getFirst("Authorization"), body));
          boolean refuse = requests.size() <= failures;
          if (delayMillis > 0) {
            try {
              Thread.sleep(delayMillis);
            } catch (InterruptedException e) {
              Thread.currentThread().interrupt();
            }
          }
          byte[] reply = (refuse ? "refused" : "ok").getBytes(StandardCharsets.UTF_8);
          if (refuse) {
            exchange.getResponseHeaders().set("WWW-Authenticate", "Bearer error=\"invalid_token\"");
          }
          exchange.sendResponseHeaders(refuse ? 401 : 200, reply.length);
          try (OutputStream out = exchange.getResponseBody()) {
            out.write(reply);
          }
        });
    server.start();
  }

  static Upstream refusingFirst() throws IOException {
    return new Upstream(1);
  }

  static Upstream alwaysRefusing() throws IOException {
    return new Upstream(Integer.MAX_VALUE);
  }

  /** Always 401, each answer 200 ms late, so that concurrent calls overlap. */
  static Upstream alwaysRefusingSlowly() throws IOException {
    return new Upstream(Integer.MAX_VALUE, 200);
  }

  static Upstream accepting() throws IOException {
    return new Upstream(0);
  }

  URI uri() {
    return URI.create("http://127.0.0.1:" + server.getAddress().getPort() + "/api/order/response");
  }

  List<Seen> requests() {
    return requests;
  }

  @Override
  public void close() {
    server.stop(0);
    pool.shutdownNow();
  }
}
