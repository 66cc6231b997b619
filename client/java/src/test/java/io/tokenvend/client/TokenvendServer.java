package io.tokenvend.client;

import java.io.File;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolver;

/**
 * Runs the real tokenvend binary ({@code $TOKENVEND_BIN}, else the repository's debug build) in
 * {@code serve --dev} mode, once for the whole test run, and stops it when the run ends.
 *
 * <p>Test classes use {@code @ExtendWith(TokenvendServer.class)} and take a {@code
 * TokenvendServer} parameter.
 */
public final class TokenvendServer
    implements BeforeAllCallback, ParameterResolver, ExtensionContext.Store.CloseableResource {
  private static final Duration READY_TIMEOUT = Duration.ofSeconds(30);

  private Process process;
  private String target;

  /** The gRPC address, {@code 127.0.0.1:<port>}. */
  public String target() {
    return target;
  }

  @Override
  public void beforeAll(ExtensionContext context) throws Exception {
    // The root store outlives every test class, so one server serves them all.
    context
        .getRoot()
        .getStore(ExtensionContext.Namespace.GLOBAL)
        .getOrComputeIfAbsent(TokenvendServer.class, k -> start(), TokenvendServer.class);
  }

  @Override
  public boolean supportsParameter(ParameterContext p, ExtensionContext e) {
    return p.getParameter().getType() == TokenvendServer.class;
  }

  @Override
  public Object resolveParameter(ParameterContext p, ExtensionContext e) {
    return e.getRoot()
        .getStore(ExtensionContext.Namespace.GLOBAL)
        .get(TokenvendServer.class, TokenvendServer.class);
  }

  private static TokenvendServer start() {
    try {
      TokenvendServer s = new TokenvendServer();
      s.launch();
      return s;
    } catch (Exception e) {
      throw new IllegalStateException("cannot start tokenvend: " + e.getMessage(), e);
    }
  }

  private void launch() throws IOException, InterruptedException {
    String bin = System.getenv("TOKENVEND_BIN");
    if (bin == null || bin.isEmpty()) {
      bin = Path.of("../../target/debug/tokenvend").toAbsolutePath().normalize().toString();
    }
    if (!Files.isExecutable(Path.of(bin))) {
      throw new IOException(
          bin + " is not an executable; build it with `cargo build -p tokenvend-server --bin"
              + " tokenvend` or set TOKENVEND_BIN");
    }
    int grpcPort = freePort();
    int adminPort = freePort();
    target = "127.0.0.1:" + grpcPort;
    Path log = Path.of("target", "tokenvend-server.log");
    Files.createDirectories(log.getParent());
    process =
        new ProcessBuilder(
                bin,
                "serve",
                "--dev",
                "--listen",
                target,
                "--admin-listen",
                "127.0.0.1:" + adminPort)
            .redirectErrorStream(true)
            .redirectOutput(log.toFile())
            .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
            .start();
    // Also covers a test JVM that dies without running the store's close().
    Runtime.getRuntime().addShutdownHook(new Thread(this::stop));

    HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(1)).build();
    HttpRequest ready =
        HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + adminPort + "/readyz"))
            .timeout(Duration.ofSeconds(2))
            .build();
    Instant deadline = Instant.now().plus(READY_TIMEOUT);
    while (true) {
      if (!process.isAlive()) {
        throw new IOException(
            "tokenvend exited with " + process.exitValue() + "; see " + log.toAbsolutePath());
      }
      try {
        if (http.send(ready, HttpResponse.BodyHandlers.discarding()).statusCode() == 200) {
          return;
        }
      } catch (IOException notYet) {
        // not listening yet
      }
      if (Instant.now().isAfter(deadline)) {
        stop();
        throw new IOException(
            "tokenvend not ready after " + READY_TIMEOUT + "; see " + log.toAbsolutePath());
      }
      Thread.sleep(100);
    }
  }

  private static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    }
  }

  private synchronized void stop() {
    if (process == null || !process.isAlive()) {
      return;
    }
    process.destroy(); // SIGTERM
    try {
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        process.destroyForcibly();
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }

  @Override
  public void close() {
    stop();
  }
}
