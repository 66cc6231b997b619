package io.tokenvend.client;

import io.grpc.Status;
import java.io.IOException;
import java.util.Optional;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;

/**
 * tokenvend could not supply a token: the one error type of this client.
 *
 * <p>It is an {@link IOException}, so that {@code java.net.http} and OkHttp calls fail with it
 * like with any other transport problem, and Spring's {@code RestClient} and {@code
 * RestTemplate} turn it into a {@code ResourceAccessException} as they do every I/O error
 * (its cause is this exception; {@link #in(Throwable)} finds it there).
 *
 * <p>{@link #code()} is the gRPC status code and {@link #retryable()} says whether trying again
 * later can help. The message names the profile and the cause, never a token.
 */
public final class TokenvendException extends IOException {
  private static final long serialVersionUID = 2L;

  private final Status.Code code;
  private final String profile;

  TokenvendException(String profile, Status.Code code, String detail, Throwable cause) {
    super("tokenvend could not supply a token for profile \"" + profile + "\": " + detail, cause);
    this.code = code;
    this.profile = profile;
  }

  /** Wraps whatever an RPC or a wait failed with, keeping its gRPC code. */
  static TokenvendException of(String profile, Throwable failure) {
    Throwable t = unwrap(failure);
    if (t instanceof TokenvendException e) {
      // A fresh instance per caller: a shared one would carry another thread's stack.
      return new TokenvendException(profile, e.code, e.detail(), e);
    }
    Status s = Status.fromThrowable(t);
    StringBuilder detail = new StringBuilder(s.getCode().toString());
    if (s.getDescription() != null) {
      detail.append(": ").append(s.getDescription());
    }
    // grpc-java says "io exception" for a refused connection; the socket error says which.
    Throwable cause = s.getCause();
    if (cause != null && cause.getMessage() != null) {
      detail.append(" (").append(cause.getMessage()).append(')');
    }
    return new TokenvendException(profile, s.getCode(), detail.toString(), t);
  }

  private String detail() {
    String m = getMessage();
    return m.substring(m.indexOf("\": ") + 3);
  }

  /**
   * The gRPC status code: {@code NOT_FOUND} for an unknown profile (or one this caller may not
   * use), {@code UNAVAILABLE} when tokenvend or its identity provider cannot be reached,
   * {@code DEADLINE_EXCEEDED} when the caller's timeout passed, {@code FAILED_PRECONDITION}
   * when the provider refused the profile's credentials, and so on.
   */
  public Status.Code code() {
    return code;
  }

  /** The profile the token was asked for. */
  public String profile() {
    return profile;
  }

  /**
   * Whether the same call may succeed later: true for {@code UNAVAILABLE}, {@code
   * DEADLINE_EXCEEDED}, {@code RESOURCE_EXHAUSTED} and {@code ABORTED}; false for every other
   * code, which needs a change of configuration or code first.
   */
  public boolean retryable() {
    return isRetryable(code);
  }

  static boolean isRetryable(Status.Code code) {
    return switch (code) {
      case UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED -> true;
      default -> false;
    };
  }

  /**
   * Finds a {@code TokenvendException} in {@code t} or its causes, such as inside the {@code
   * ResourceAccessException} of a Spring {@code RestClient} or a {@code
   * WebClientRequestException}.
   */
  public static Optional<TokenvendException> in(Throwable t) {
    for (int depth = 0; t != null && depth < 16; depth++, t = t.getCause()) {
      if (t instanceof TokenvendException e) {
        return Optional.of(e);
      }
    }
    return Optional.empty();
  }

  static Throwable unwrap(Throwable e) {
    while ((e instanceof CompletionException || e instanceof ExecutionException)
        && e.getCause() != null) {
      e = e.getCause();
    }
    return e;
  }
}
