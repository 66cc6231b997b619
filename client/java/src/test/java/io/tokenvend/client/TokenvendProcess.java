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
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The real tokenvend binary ({@code $TOKENVEND_BIN}, else the repository's debug build) on free
 * loopback ports, either {@code serve --dev} or {@code serve --config FILE}.
 */
final class TokenvendProcess implements AutoCloseable {
  private static final Duration READY_TIMEOUT = Duration.ofSeconds(30);

  private final Process process;
  private final String target;
  private final Path log;

  private TokenvendProcess(List<String> args, String name, int grpcPort)
      throws IOException, InterruptedException {
    String bin = binary();
    int adminPort = freePort();
    target = "127.0.0.1:" + grpcPort;
    log = Path.of("target", "tokenvend-" + name + ".log").toAbsolutePath();
    Files.createDirectories(log.getParent());
    List<String> command = new ArrayList<>(List.of(bin, "serve"));
    command.addAll(args);
    command.addAll(List.of("--listen", target, "--admin-listen", "127.0.0.1:" + adminPort));
    process =
        new ProcessBuilder(command)
            .redirectErrorStream(true)
            .redirectOutput(log.toFile())
            .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
            .start();
    // Also covers a test JVM that dies without closing it.
    Runtime.getRuntime().addShutdownHook(new Thread(this::close));
    waitReady(adminPort);
  }

  /** {@code tokenvend serve --dev}: the {@code demo} profile, 300 s tokens. */
  static TokenvendProcess dev(String name) throws IOException, InterruptedException {
    return new TokenvendProcess(List.of("--dev"), name, freePort());
  }

  /** {@code tokenvend serve --dev} on this gRPC port, such as where another one ran. */
  static TokenvendProcess dev(String name, int grpcPort) throws IOException, InterruptedException {
    return new TokenvendProcess(List.of("--dev"), name, grpcPort);
  }

  /** {@code tokenvend serve --config} with this YAML. */
  static TokenvendProcess config(String name, String yaml, Path dir)
      throws IOException, InterruptedException {
    Path file = dir.resolve(name + ".yaml");
    Files.writeString(file, yaml);
    return new TokenvendProcess(List.of("--config", file.toString()), name, freePort());
  }

  /** The gRPC address, {@code 127.0.0.1:<port>}. */
  String target() {
    return target;
  }

  int port() {
    return Integer.parseInt(target.substring(target.lastIndexOf(':') + 1));
  }

  static String binary() throws IOException {
    String bin = System.getenv("TOKENVEND_BIN");
    if (bin == null || bin.isEmpty()) {
      bin = Path.of("../../target/debug/tokenvend").toAbsolutePath().normalize().toString();
    }
    if (!Files.isExecutable(Path.of(bin))) {
      throw new IOException(
          bin
              + " is not an executable; build it with `cargo build -p tokenvend-server --bin"
              + " tokenvend` or set TOKENVEND_BIN");
    }
    return bin;
  }

  private void waitReady(int adminPort) throws IOException, InterruptedException {
    HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(1)).build();
    HttpRequest ready =
        HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + adminPort + "/readyz"))
            .timeout(Duration.ofSeconds(2))
            .build();
    Instant deadline = Instant.now().plus(READY_TIMEOUT);
    while (true) {
      if (!process.isAlive()) {
        throw new IOException("tokenvend exited with " + process.exitValue() + "; see " + log);
      }
      try {
        if (http.send(ready, HttpResponse.BodyHandlers.discarding()).statusCode() == 200) {
          return;
        }
      } catch (IOException notYet) {
        // not listening yet
      }
      if (Instant.now().isAfter(deadline)) {
        close();
        throw new IOException("tokenvend not ready after " + READY_TIMEOUT + "; see " + log);
      }
      Thread.sleep(50);
    }
  }

  static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return s.getLocalPort();
    }
  }

  /** Stops the server (SIGTERM, then SIGKILL after 10 s). */
  @Override
  public synchronized void close() {
    if (!process.isAlive()) {
      return;
    }
    process.destroy();
    try {
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        process.destroyForcibly();
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }
}
