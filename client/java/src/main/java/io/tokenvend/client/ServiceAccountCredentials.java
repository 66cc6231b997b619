package io.tokenvend.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.Status;
import java.io.IOException;
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
      String value = Files.readString(file, StandardCharsets.UTF_8).strip();
      if (value.isEmpty()) {
        throw new IOException("the ServiceAccount token file " + file + " is empty");
      }
      cached = new Cached(value, modified, now);
    }
    return cached.value();
  }
}
