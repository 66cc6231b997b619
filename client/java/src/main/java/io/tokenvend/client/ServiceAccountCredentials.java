package io.tokenvend.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.Status;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.concurrent.Executor;

/**
 * Sends the content of a token file, such as a Kubernetes projected ServiceAccount token, as
 * {@code authorization: Bearer <content>} on every call.
 *
 * <p>The kubelet rotates projected tokens by swapping the file, so the file is read again when
 * its modification time changes and at least once a minute (a swap can keep the time).
 */
final class ServiceAccountCredentials extends CallCredentials {
  static final Duration MAX_AGE = Duration.ofMinutes(1);
  // Projected tokens are about 1 KiB; gRPC would refuse a header this size anyway.
  static final int MAX_BYTES = 64 * 1024;
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final Path file;
  private final Clock clock;
  private Cached cached; // guarded by this

  private record Cached(String value, FileTime modified, Instant readAt) {}

  ServiceAccountCredentials(Path file, Clock clock) {
    this.file = file;
    this.clock = clock;
  }

  @Override
  public void applyRequestMetadata(
      RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
    // File I/O stays off the transport thread.
    appExecutor.execute(
        () -> {
          try {
            Metadata headers = new Metadata();
            headers.put(AUTHORIZATION, "Bearer " + current());
            applier.apply(headers);
          } catch (IOException | RuntimeException e) {
            applier.fail(
                Status.UNAUTHENTICATED
                    .withDescription("cannot read the ServiceAccount token file " + file)
                    .withCause(e));
          }
        });
  }

  /** The token to send, read from the file when it may have changed. */
  synchronized String current() throws IOException {
    Instant now = clock.instant();
    FileTime modified;
    try {
      modified = Files.getLastModifiedTime(file);
    } catch (IOException e) {
      // Mid-rotation the file can be briefly missing; the last token is still good.
      if (cached != null) {
        return cached.value();
      }
      throw e;
    }
    if (cached == null
        || !cached.modified().equals(modified)
        || !now.isBefore(cached.readAt().plus(MAX_AGE))) {
      String value = read(file);
      if (value.isEmpty()) {
        throw new IOException("the ServiceAccount token file " + file + " is empty");
      }
      cached = new Cached(value, modified, now);
    }
    return cached.value();
  }

  /** The file's content, refusing more than {@link #MAX_BYTES} (a device, a wrong path). */
  private static String read(Path file) throws IOException {
    byte[] bytes;
    try (InputStream in = Files.newInputStream(file)) {
      bytes = in.readNBytes(MAX_BYTES + 1);
    }
    if (bytes.length > MAX_BYTES) {
      throw new IOException(
          "the ServiceAccount token file " + file + " is larger than " + MAX_BYTES + " bytes");
    }
    return new String(bytes, StandardCharsets.UTF_8).strip();
  }
}
