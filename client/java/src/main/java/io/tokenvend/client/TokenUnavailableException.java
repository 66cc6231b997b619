package io.tokenvend.client;

import io.grpc.Status;
import java.io.IOException;

/**
 * Thrown by the HTTP integrations when tokenvend could not supply a token, so that the HTTP
 * call fails with an {@link IOException} like any other transport problem.
 *
 * <p>The gRPC status is kept: {@link #status()} tells, for example, {@code UNAVAILABLE}
 * (retry later) from {@code NOT_FOUND} (a wrong profile name).
 */
public final class TokenUnavailableException extends IOException {
  private static final long serialVersionUID = 1L;

  private final transient Status status;

  TokenUnavailableException(String profile, Throwable cause) {
    super(
        "tokenvend could not supply a token for profile \""
            + profile
            + "\": "
            + describe(Status.fromThrowable(cause)),
        cause);
    this.status = Status.fromThrowable(cause);
  }

  private static String describe(Status s) {
    return s.getDescription() == null
        ? s.getCode().toString()
        : s.getCode() + ": " + s.getDescription();
  }

  /** The gRPC status tokenvend answered with, or {@code UNKNOWN} for a local failure. */
  public Status status() {
    return status;
  }

  /** Shorthand for {@code status().getCode()}. */
  public Status.Code code() {
    return status.getCode();
  }
}
