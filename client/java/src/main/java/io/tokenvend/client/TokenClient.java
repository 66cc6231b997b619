package io.tokenvend.client;

import io.grpc.CallCredentials;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import io.tokenvend.v1.GetTokenRequest;
import io.tokenvend.v1.TokenServiceGrpc;
import java.nio.file.Path;
import java.time.Clock;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

/**
 * A client for tokenvend that keeps a local copy of each profile's token.
 *
 * <pre>{@code
 * try (TokenClient tokens = TokenClient.builder().target("127.0.0.1:50051").build()) {
 *   AccessToken token = tokens.getToken("jakamo");
 *   token.headers().forEach(request::setHeader);
 * }
 * }</pre>
 *
 * <p>{@link #getToken(String)} answers from the local copy while it has more than the refresh
 * margin (default 60 s) left, and asks tokenvend otherwise. Concurrent callers for one profile
 * share a single RPC. When the upstream API refuses a token with HTTP 401, report it with
 * {@link #reject(String, String)}; {@link TokenvendHttp}, {@link TokenvendInterceptor} and
 * {@link TokenvendAuthenticator} do that for you.
 *
 * <p>Failures are thrown as {@link StatusRuntimeException}; {@code getStatus().getCode()} is
 * {@code NOT_FOUND} for an unknown profile, {@code UNAVAILABLE} when the identity provider is
 * down (retry with backoff), {@code FAILED_PRECONDITION} when it refused the profile's
 * credentials, {@code OUT_OF_RANGE} when a min TTL is longer than the profile's tokens live.
 *
 * <p>Thread-safe. Close it to shut down the channel it created (a channel passed to
 * {@link Builder#channel(Channel)} is left to its owner).
 */
public final class TokenClient implements AutoCloseable {
  /** How long before expiry a cached token is replaced, unless the builder says otherwise. */
  public static final Duration DEFAULT_REFRESH_MARGIN = Duration.ofSeconds(60);

  /** The deadline of each RPC, unless the builder says otherwise. */
  public static final Duration DEFAULT_CALL_TIMEOUT = Duration.ofSeconds(30);

  private final ManagedChannel ownedChannel;
  private final TokenServiceGrpc.TokenServiceStub stub;
  private final Duration refreshMargin;
  private final Duration callTimeout;
  private final Clock clock;

  private final ConcurrentHashMap<String, AccessToken> cache = new ConcurrentHashMap<>();
  // The last token reported per profile, so that an RPC started before the report cannot put
  // it back into the cache.
  private final ConcurrentHashMap<String, String> rejected = new ConcurrentHashMap<>();
  private final ConcurrentHashMap<FlightKey, CompletableFuture<AccessToken>> flights =
      new ConcurrentHashMap<>();

  /** One RPC in flight: a plain refresh has an empty {@code rejectedToken}. */
  private record FlightKey(String profile, String rejectedToken) {}

  private TokenClient(Builder b) {
    Channel channel;
    if (b.channel != null) {
      ownedChannel = null;
      channel = b.channel;
    } else {
      ownedChannel = Grpc.newChannelBuilder(b.target, b.credentials).build();
      channel = ownedChannel;
    }
    if (!b.interceptors.isEmpty()) {
      channel = ClientInterceptors.intercept(channel, b.interceptors);
    }
    TokenServiceGrpc.TokenServiceStub s = TokenServiceGrpc.newStub(channel);
    if (b.serviceAccountTokenFile != null) {
      CallCredentials creds = new ServiceAccountCredentials(b.serviceAccountTokenFile, b.clock);
      s = s.withCallCredentials(creds);
    }
    stub = s;
    refreshMargin = b.refreshMargin;
    callTimeout = b.callTimeout;
    clock = b.clock;
  }

  /** Starts a builder; set {@link Builder#target(String)} or {@link Builder#channel(Channel)}. */
  public static Builder builder() {
    return new Builder();
  }

  /** A client for a plaintext server at {@code host:port}, with the defaults. */
  public static TokenClient create(String target) {
    return builder().target(target).build();
  }

  /** Returns a token for {@code profile} with more than the refresh margin left. */
  public AccessToken getToken(String profile) {
    return getToken(profile, Duration.ZERO);
  }

  /**
   * Returns a token for {@code profile} valid for at least {@code minTtl}, from the local copy
   * when it has more than {@code minTtl} plus the refresh margin left.
   *
   * @throws StatusRuntimeException if tokenvend fails or cannot be reached; {@code CANCELLED}
   *     if the thread is interrupted (its interrupt flag is set again)
   */
  public AccessToken getToken(String profile, Duration minTtl) {
    return await(getTokenAsync(profile, minTtl));
  }

  /** Like {@link #getToken(String, Duration)}, without blocking the calling thread. */
  public CompletableFuture<AccessToken> getTokenAsync(String profile, Duration minTtl) {
    checkProfile(profile);
    Objects.requireNonNull(minTtl, "minTtl");
    if (minTtl.isNegative()) {
      throw new IllegalArgumentException("minTtl must not be negative");
    }
    AccessToken cached = cache.get(profile);
    if (cached != null && isFresh(cached, minTtl)) {
      return CompletableFuture.completedFuture(cached);
    }
    // A joined RPC may have been started for a shorter min TTL than this caller needs.
    return flight(profile, minTtl, "")
        .thenCompose(
            t ->
                t.remaining(clock).compareTo(minTtl) > 0
                    ? CompletableFuture.completedFuture(t)
                    : fetch(profile, minTtl, ""));
  }

  /**
   * Reports that the upstream API refused {@code rejectedAccessToken} (HTTP 401) and returns
   * the token to use instead.
   *
   * <p>The local copy is dropped only if it is that token; if it already holds a newer one,
   * that one is returned without an RPC. Otherwise tokenvend is asked with {@code
   * rejected_token}, which makes it fetch a new token once however many callers report the
   * same one. The result can still be the refused token if tokenvend had no other.
   */
  public AccessToken reject(String profile, String rejectedAccessToken) {
    return await(rejectAsync(profile, rejectedAccessToken));
  }

  /** Like {@link #reject(String, String)}, without blocking the calling thread. */
  public CompletableFuture<AccessToken> rejectAsync(String profile, String rejectedAccessToken) {
    checkProfile(profile);
    if (rejectedAccessToken == null || rejectedAccessToken.isEmpty()) {
      throw new IllegalArgumentException("rejectedAccessToken must not be empty");
    }
    rejected.put(profile, rejectedAccessToken);
    AccessToken current =
        cache.computeIfPresent(
            profile, (k, t) -> t.accessToken().equals(rejectedAccessToken) ? null : t);
    if (current != null && isFresh(current, Duration.ZERO)) {
      return CompletableFuture.completedFuture(current);
    }
    return flight(profile, Duration.ZERO, rejectedAccessToken);
  }

  /** Forgets every local copy; the next {@link #getToken(String)} asks tokenvend. */
  public void clearCache() {
    cache.clear();
  }

  /** Shuts down the channel this client created, waiting up to 5 s for calls in flight. */
  @Override
  public void close() {
    if (ownedChannel == null) {
      return;
    }
    ownedChannel.shutdown();
    try {
      if (!ownedChannel.awaitTermination(5, TimeUnit.SECONDS)) {
        ownedChannel.shutdownNow();
      }
    } catch (InterruptedException e) {
      ownedChannel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  @Override
  public String toString() {
    return "TokenClient{refreshMargin="
        + refreshMargin
        + ", cachedProfiles="
        + cache.keySet()
        + "}";
  }

  private boolean isFresh(AccessToken t, Duration minTtl) {
    return t.remaining(clock).compareTo(refreshMargin.plus(minTtl)) > 0;
  }

  /** Joins the RPC in flight for this key, or starts one. */
  private CompletableFuture<AccessToken> flight(
      String profile, Duration minTtl, String rejectedToken) {
    FlightKey key = new FlightKey(profile, rejectedToken);
    CompletableFuture<AccessToken> mine = new CompletableFuture<>();
    CompletableFuture<AccessToken> running = flights.putIfAbsent(key, mine);
    if (running != null) {
      return running;
    }
    fetch(profile, minTtl, rejectedToken)
        .whenComplete(
            (t, e) -> {
              // Removed before completing, so a caller woken by the result who asks again
              // starts a new RPC instead of seeing this one.
              flights.remove(key, mine);
              if (e != null) {
                mine.completeExceptionally(unwrap(e));
              } else {
                mine.complete(t);
              }
            });
    return mine;
  }

  /**
   * Asks tokenvend for a token living the refresh margin longer than needed, so that the local
   * copy is not stale on arrival; if the profile's tokens live too short for that, asks again
   * for just what the caller needs.
   */
  private CompletableFuture<AccessToken> fetch(
      String profile, Duration minTtl, String rejectedToken) {
    CompletableFuture<AccessToken> first =
        rpc(profile, minTtl.plus(refreshMargin), rejectedToken);
    if (refreshMargin.isZero()) {
      return first.thenApply(t -> store(profile, t));
    }
    return first
        .exceptionallyCompose(
            e ->
                Status.fromThrowable(e).getCode() == Status.Code.OUT_OF_RANGE
                    ? rpc(profile, minTtl, rejectedToken)
                    : CompletableFuture.failedFuture(unwrap(e)))
        .thenApply(t -> store(profile, t));
  }

  private CompletableFuture<AccessToken> rpc(
      String profile, Duration minTtl, String rejectedToken) {
    GetTokenRequest.Builder req = GetTokenRequest.newBuilder().setProfile(profile);
    if (!minTtl.isZero()) {
      req.setMinTtl(
          com.google.protobuf.Duration.newBuilder()
              .setSeconds(minTtl.getSeconds())
              .setNanos(minTtl.getNano()));
    }
    if (!rejectedToken.isEmpty()) {
      req.setRejectedToken(rejectedToken);
    }
    CompletableFuture<AccessToken> result = new CompletableFuture<>();
    stub.withDeadlineAfter(callTimeout.toNanos(), TimeUnit.NANOSECONDS)
        .getToken(
            req.build(),
            new StreamObserver<io.tokenvend.v1.Token>() {
              @Override
              public void onNext(io.tokenvend.v1.Token value) {
                result.complete(AccessToken.fromProto(value));
              }

              @Override
              public void onError(Throwable t) {
                result.completeExceptionally(t);
              }

              @Override
              public void onCompleted() {
                result.completeExceptionally(
                    Status.INTERNAL
                        .withDescription("GetToken returned no token")
                        .asRuntimeException());
              }
            });
    return result;
  }

  private AccessToken store(String profile, AccessToken fresh) {
    if (fresh.accessToken().equals(rejected.get(profile))) {
      return fresh;
    }
    // Keep whichever lives longer: a slow RPC must not replace a newer token.
    cache.merge(
        profile, fresh, (old, neu) -> neu.expiresAt().isBefore(old.expiresAt()) ? old : neu);
    return fresh;
  }

  private static void checkProfile(String profile) {
    if (profile == null || profile.isEmpty()) {
      throw new IllegalArgumentException("profile must not be empty");
    }
  }

  private static Throwable unwrap(Throwable e) {
    while ((e instanceof CompletionException || e instanceof ExecutionException)
        && e.getCause() != null) {
      e = e.getCause();
    }
    return e;
  }

  /** Waits for a shared future, rethrowing a failure with this thread's stack trace. */
  private static AccessToken await(CompletableFuture<AccessToken> future) {
    try {
      return future.get();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw Status.CANCELLED
          .withDescription("interrupted while waiting for tokenvend")
          .withCause(e)
          .asRuntimeException();
    } catch (CancellationException e) {
      throw Status.CANCELLED.withCause(e).asRuntimeException();
    } catch (ExecutionException e) {
      Throwable cause = unwrap(e);
      if (cause instanceof StatusRuntimeException sre) {
        StatusRuntimeException copy =
            new StatusRuntimeException(sre.getStatus(), sre.getTrailers());
        copy.addSuppressed(sre);
        throw copy;
      }
      if (cause instanceof RuntimeException re) {
        throw re;
      }
      if (cause instanceof Error err) {
        throw err;
      }
      throw Status.fromThrowable(cause).asRuntimeException();
    }
  }

  /** Configures a {@link TokenClient}. */
  public static final class Builder {
    private String target;
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private Channel channel;
    private Path serviceAccountTokenFile;
    private Duration refreshMargin = DEFAULT_REFRESH_MARGIN;
    private Duration callTimeout = DEFAULT_CALL_TIMEOUT;
    private Clock clock = Clock.systemUTC();
    private final List<ClientInterceptor> interceptors = new ArrayList<>();

    private Builder() {}

    /** The server, such as {@code 127.0.0.1:50051} or {@code dns:///tokenvend.auth:50051}. */
    public Builder target(String target) {
      this.target = Objects.requireNonNull(target, "target");
      return this;
    }

    /**
     * How to secure the channel to {@link #target(String)}; plaintext unless set. For TLS:
     * {@code TlsChannelCredentials.create()} or one built with a custom trust store.
     */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = Objects.requireNonNull(credentials, "credentials");
      return this;
    }

    /**
     * Uses an existing channel instead of {@link #target(String)}; its owner keeps it, and
     * {@link TokenClient#close()} does not shut it down.
     */
    public Builder channel(Channel channel) {
      this.channel = Objects.requireNonNull(channel, "channel");
      return this;
    }

    /**
     * Sends the content of this file as {@code authorization: Bearer <content>} on every call,
     * reading it again when it changes and at least once a minute. Meant for a Kubernetes
     * projected ServiceAccount token. Use TLS unless tokenvend is on the same host or pod.
     */
    public Builder serviceAccountTokenFile(Path file) {
      this.serviceAccountTokenFile = Objects.requireNonNull(file, "file");
      return this;
    }

    /** How long before expiry a cached token is replaced; 60 s unless set. */
    public Builder refreshMargin(Duration margin) {
      if (margin.isNegative()) {
        throw new IllegalArgumentException("refreshMargin must not be negative");
      }
      this.refreshMargin = margin;
      return this;
    }

    /** The deadline of each RPC; 30 s unless set. */
    public Builder callTimeout(Duration timeout) {
      if (timeout.isNegative() || timeout.isZero()) {
        throw new IllegalArgumentException("callTimeout must be positive");
      }
      this.callTimeout = timeout;
      return this;
    }

    /** Interceptors for the RPCs to tokenvend, such as for metrics or tracing. */
    public Builder intercept(ClientInterceptor... interceptors) {
      this.interceptors.addAll(List.of(interceptors));
      return this;
    }

    /** The clock for expiry checks; for tests. */
    Builder clock(Clock clock) {
      this.clock = Objects.requireNonNull(clock, "clock");
      return this;
    }

    /** Creates the client; connects lazily, on the first RPC. */
    public TokenClient build() {
      if ((target == null) == (channel == null)) {
        throw new IllegalStateException("set exactly one of target and channel");
      }
      return new TokenClient(this);
    }
  }
}
