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
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import io.tokenvend.v1.GetTokenRequest;
import io.tokenvend.v1.TokenServiceGrpc;
import io.tokenvend.v1.WatchTokenRequest;
import java.nio.file.Path;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * A client for tokenvend that keeps a local copy of each profile's token.
 *
 * <pre>{@code
 * try (TokenClient tokens = TokenClient.builder().target("127.0.0.1:50051").build()) {
 *   Token token = tokens.getToken("jakamo");
 *   token.headers().forEach(request::setHeader);
 * }
 * }</pre>
 *
 * <p>{@link #getToken(String)} answers from the local copy while the copy has more than its
 * refresh margin left: a tenth of the token's lifetime as received, at most {@link
 * Builder#maxRefreshMargin(Duration)} (60 s). tokenvend replaces tokens at about 80 % of their
 * lifetime, so the RPC made at 90 % finds the replacement in its cache. Concurrent callers for
 * one profile share a single RPC. If tokenvend cannot be reached, a local copy that has not
 * expired is served even inside its margin.
 *
 * <p>When the upstream API refuses a token with HTTP 401, report it with {@link #reject(String,
 * String)}; {@link TokenvendHttp}, {@link TokenvendInterceptor}, {@link
 * TokenvendAuthenticator} and the Spring adapters in {@code io.tokenvend.client.spring} do
 * that for you. {@link #watch(String)} keeps a profile's copy current over a stream, so that
 * gets never wait.
 *
 * <p>Failures are thrown as {@link TokenvendException}, with the gRPC code and whether a retry
 * can help. Each wait is bounded by the caller's timeout, or {@link #DEFAULT_TIMEOUT}.
 *
 * <p>Thread-safe. Close it to stop its watches and shut down the channel it created (a channel
 * passed to {@link Builder#channel(Channel)} is left to its owner).
 */
public final class TokenClient implements AutoCloseable {
  /** The largest refresh margin, unless the builder says otherwise. */
  public static final Duration DEFAULT_MAX_REFRESH_MARGIN = Duration.ofSeconds(60);

  /** How long a call waits for tokenvend when its caller gives no timeout. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(10);

  /** Least time between two RPCs for a copy inside its margin that tokenvend could not renew. */
  static final Duration ASK_INTERVAL = Duration.ofSeconds(1);

  private static final Duration WATCH_BACKOFF_MIN = Duration.ofMillis(200);
  private static final Duration WATCH_BACKOFF_MAX = Duration.ofSeconds(30);

  private final ManagedChannel ownedChannel;
  private final TokenServiceGrpc.TokenServiceStub stub;
  private final Duration maxRefreshMargin;
  private final Duration callTimeout;
  private final Clock clock;
  private ScheduledExecutorService scheduler; // guarded by this; started by the first watch
  private boolean closed; // guarded by this

  /** The local copy of a profile's token and the margin fixed when it was first received. */
  private record Entry(Token token, Duration margin) {}

  /** The last token reported for a profile, and how many distinct tokens were reported. */
  private record Rejected(String token, long generation) {}

  private final ConcurrentHashMap<String, Entry> cache = new ConcurrentHashMap<>();
  // A copy inside its margin is served without an RPC until this instant: tokenvend was just
  // asked and had nothing newer, or could not be reached.
  private final ConcurrentHashMap<String, Instant> holdUntil = new ConcurrentHashMap<>();
  // So that an answer to an RPC started before a report cannot put the reported token back.
  private final ConcurrentHashMap<String, Rejected> rejected = new ConcurrentHashMap<>();
  private final ConcurrentHashMap<FlightKey, CompletableFuture<Token>> flights =
      new ConcurrentHashMap<>();
  private final Set<Watch> watches = ConcurrentHashMap.newKeySet();

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
    maxRefreshMargin = b.maxRefreshMargin;
    callTimeout = b.callTimeout;
    clock = b.clock;
  }

  /** The thread that reopens broken watches; null once the client is closed. */
  private synchronized ScheduledExecutorService scheduler() {
    if (scheduler == null && !closed) {
      scheduler =
          Executors.newSingleThreadScheduledExecutor(
              r -> {
                Thread t = new Thread(r, "tokenvend-watch");
                t.setDaemon(true); // never keeps an application alive
                return t;
              });
    }
    return scheduler;
  }

  /** Starts a builder; set {@link Builder#target(String)} or {@link Builder#channel(Channel)}. */
  public static Builder builder() {
    return new Builder();
  }

  /** A client for a plaintext server at {@code host:port}, with the defaults. */
  public static TokenClient create(String target) {
    return builder().target(target).build();
  }

  /**
   * Returns a token for {@code profile}, from the local copy while it is outside its refresh
   * margin, waiting at most the client's timeout (10 s unless set).
   *
   * @throws TokenvendException if tokenvend fails or does not answer in time; {@code
   *     CANCELLED} if the thread is interrupted (its interrupt flag is set again)
   */
  public Token getToken(String profile) throws TokenvendException {
    return getToken(profile, Duration.ZERO, null);
  }

  /**
   * Returns a token for {@code profile} valid for at least {@code minTtl}.
   *
   * @throws TokenvendException as {@link #getToken(String)}; {@code OUT_OF_RANGE} if the
   *     profile's tokens live shorter than {@code minTtl}
   */
  public Token getToken(String profile, Duration minTtl) throws TokenvendException {
    return getToken(profile, minTtl, null);
  }

  /**
   * Returns a token for {@code profile} valid for at least {@code minTtl} (zero: any), waiting
   * at most {@code timeout} (null: the client's timeout).
   *
   * @throws TokenvendException as {@link #getToken(String)}; {@code DEADLINE_EXCEEDED} once
   *     {@code timeout} has passed
   */
  public Token getToken(String profile, Duration minTtl, Duration timeout)
      throws TokenvendException {
    return await(profile, getTokenAsync(profile, minTtl, timeout));
  }

  /** Like {@link #getToken(String)}, without blocking the calling thread. */
  public CompletableFuture<Token> getTokenAsync(String profile) {
    return getTokenAsync(profile, Duration.ZERO, null);
  }

  /**
   * Like {@link #getToken(String, Duration, Duration)}, without blocking the calling thread.
   * The future fails with a {@link TokenvendException}; cancelling it stops only this caller's
   * wait, never an RPC that other callers share.
   */
  public CompletableFuture<Token> getTokenAsync(String profile, Duration minTtl, Duration timeout) {
    checkProfile(profile);
    Objects.requireNonNull(minTtl, "minTtl");
    if (minTtl.isNegative()) {
      throw new IllegalArgumentException("minTtl must not be negative");
    }
    Duration wait = checkTimeout(timeout);
    Entry e = cache.get(profile);
    if (e != null) {
      Duration left = e.token().remaining(clock);
      if (left.compareTo(e.margin().plus(minTtl)) > 0) {
        return CompletableFuture.completedFuture(e.token());
      }
      if (minTtl.isZero() && left.compareTo(Duration.ZERO) > 0 && isHeld(profile)) {
        return CompletableFuture.completedFuture(e.token());
      }
    }
    // A joined RPC may have been started for a shorter min TTL than this caller needs.
    CompletableFuture<Token> shared =
        flight(profile, minTtl, "", wait)
            .thenCompose(
                t ->
                    t.remaining(clock).compareTo(minTtl) >= 0
                        ? CompletableFuture.completedFuture(t)
                        : fetch(profile, minTtl, "", wait));
    return forCaller(profile, shared, wait, minTtl);
  }

  /**
   * Reports that the upstream API refused {@code rejectedAccessToken} (HTTP 401) and returns
   * the token to use instead, waiting at most the client's timeout.
   *
   * <p>If the local copy is another token already, that copy is returned without an RPC.
   * Otherwise tokenvend is asked with {@code rejected_token}, once however many threads report
   * the same token at the same time; tokenvend in turn asks its identity provider once however
   * many clients report it. The result can still be the refused token if tokenvend had no
   * other (see its {@code rejected_token_min_interval}).
   *
   * @throws TokenvendException as {@link #getToken(String)}
   */
  public Token reject(String profile, String rejectedAccessToken) throws TokenvendException {
    return reject(profile, rejectedAccessToken, null);
  }

  /** Like {@link #reject(String, String)}, waiting at most {@code timeout} (null: default). */
  public Token reject(String profile, String rejectedAccessToken, Duration timeout)
      throws TokenvendException {
    return await(profile, rejectAsync(profile, rejectedAccessToken, timeout));
  }

  /** Like {@link #reject(String, String)}, without blocking the calling thread. */
  public CompletableFuture<Token> rejectAsync(String profile, String rejectedAccessToken) {
    return rejectAsync(profile, rejectedAccessToken, null);
  }

  /** Like {@link #reject(String, String, Duration)}, without blocking the calling thread. */
  public CompletableFuture<Token> rejectAsync(
      String profile, String rejectedAccessToken, Duration timeout) {
    checkProfile(profile);
    if (rejectedAccessToken == null || rejectedAccessToken.isEmpty()) {
      throw new IllegalArgumentException("rejectedAccessToken must not be empty");
    }
    Duration wait = checkTimeout(timeout);
    Entry e = cache.get(profile);
    if (e != null && !e.token().accessToken().equals(rejectedAccessToken)) {
      return getTokenAsync(profile, Duration.ZERO, wait);
    }
    rejected.compute(
        profile,
        (k, r) ->
            r != null && r.token().equals(rejectedAccessToken)
                ? r
                : new Rejected(rejectedAccessToken, r == null ? 1 : r.generation() + 1));
    if (e != null) {
      cache.remove(profile, e);
    }
    holdUntil.remove(profile);
    return forCaller(profile, flight(profile, Duration.ZERO, rejectedAccessToken, wait), wait, null);
  }

  /**
   * Keeps the local copy of {@code profile}'s token current over a {@code WatchToken} stream,
   * so that {@link #getToken(String)} finds each replacement without an RPC. The stream is
   * opened again with backoff (0.2 s doubling to 30 s) when it breaks. Close the returned
   * handle, or this client, to stop it.
   */
  public Watch watch(String profile) {
    checkProfile(profile);
    if (scheduler() == null) {
      throw new IllegalStateException("the TokenClient is closed");
    }
    Watch w = new Watch(profile);
    watches.add(w);
    w.open();
    return w;
  }

  /** The local copy of {@code profile}'s token, if any; for tests. */
  Token cached(String profile) {
    Entry e = cache.get(profile);
    return e == null ? null : e.token();
  }

  /** Forgets every local copy; the next {@link #getToken(String)} asks tokenvend. */
  public void clearCache() {
    cache.clear();
    holdUntil.clear();
  }

  /**
   * Stops the watches and shuts down the channel this client created, waiting up to 5 s for
   * calls in flight.
   */
  @Override
  public void close() {
    synchronized (this) {
      closed = true;
      if (scheduler != null) {
        scheduler.shutdownNow();
      }
    }
    for (Watch w : watches) {
      w.close();
    }
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
    return "TokenClient{maxRefreshMargin="
        + maxRefreshMargin
        + ", callTimeout="
        + callTimeout
        + ", cachedProfiles="
        + cache.keySet()
        + "}";
  }

  /** A live copy started by {@link TokenClient#watch(String)}. */
  public final class Watch implements AutoCloseable {
    private final String profile;
    private volatile boolean closed;
    private volatile ClientCallStreamObserver<WatchTokenRequest> call;
    private int failures; // touched by the stream's callbacks one at a time

    private Watch(String profile) {
      this.profile = profile;
    }

    /** The profile watched. */
    public String profile() {
      return profile;
    }

    private void open() {
      if (closed) {
        return;
      }
      stub.watchToken(
          WatchTokenRequest.newBuilder().setProfile(profile).build(),
          new ClientResponseObserver<WatchTokenRequest, io.tokenvend.v1.Token>() {
            @Override
            public void beforeStart(ClientCallStreamObserver<WatchTokenRequest> stream) {
              call = stream;
            }

            @Override
            public void onNext(io.tokenvend.v1.Token value) {
              failures = 0;
              store(profile, Token.fromProto(value), generation(profile));
            }

            @Override
            public void onError(Throwable t) {
              reopenLater();
            }

            @Override
            public void onCompleted() {
              // The server ends a stream on shutdown or when the profile changes: watch again.
              reopenLater();
            }
          });
      if (closed) {
        close(); // closed while the stream was being opened
      }
    }

    private void reopenLater() {
      if (closed) {
        return;
      }
      long max =
          Math.min(
              WATCH_BACKOFF_MAX.toMillis(), WATCH_BACKOFF_MIN.toMillis() << Math.min(failures, 10));
      failures++;
      long delay = max / 2 + ThreadLocalRandom.current().nextLong(max / 2 + 1);
      ScheduledExecutorService s = scheduler();
      try {
        if (s != null) {
          s.schedule(this::open, delay, TimeUnit.MILLISECONDS);
        }
      } catch (RejectedExecutionException stopped) {
        // The client was closed meanwhile.
      }
    }

    /** Stops watching; the local copy stays and is renewed by {@code getToken} as usual. */
    @Override
    public void close() {
      closed = true;
      watches.remove(this);
      ClientCallStreamObserver<WatchTokenRequest> c = call;
      if (c != null) {
        c.cancel("watch closed", null);
      }
    }
  }

  private boolean isHeld(String profile) {
    Instant until = holdUntil.get(profile);
    return until != null && clock.instant().isBefore(until);
  }

  private long generation(String profile) {
    Rejected r = rejected.get(profile);
    return r == null ? 0 : r.generation();
  }

  /**
   * What one caller waits for: the shared RPC bounded by its own timeout, and on a failure
   * that a retry could fix, the local copy while it has not expired.
   */
  private CompletableFuture<Token> forCaller(
      String profile, CompletableFuture<Token> shared, Duration wait, Duration minTtl) {
    CompletableFuture<Token> mine = new CompletableFuture<>();
    shared
        .copy()
        .orTimeout(wait.toNanos(), TimeUnit.NANOSECONDS)
        .whenComplete(
            (t, err) -> {
              if (err == null) {
                mine.complete(t);
                return;
              }
              Throwable cause = TokenvendException.unwrap(err);
              TokenvendException failure =
                  cause instanceof TimeoutException
                      ? new TokenvendException(
                          profile,
                          Status.Code.DEADLINE_EXCEEDED,
                          "DEADLINE_EXCEEDED: no answer from tokenvend within " + wait,
                          null)
                      : TokenvendException.of(profile, cause);
              Entry e = cache.get(profile);
              if (minTtl != null
                  && failure.retryable()
                  && e != null
                  && e.token().remaining(clock).compareTo(minTtl) > 0
                  && e.token().remaining(clock).compareTo(Duration.ZERO) > 0) {
                // tokenvend is unreachable: the copy is still good, and an outage costs one
                // RPC per interval, not one per call.
                holdUntil.put(profile, clock.instant().plus(ASK_INTERVAL));
                mine.complete(e.token());
                return;
              }
              mine.completeExceptionally(failure);
            });
    return mine;
  }

  /** Joins the RPC in flight for this key, or starts one. */
  private CompletableFuture<Token> flight(
      String profile, Duration minTtl, String rejectedToken, Duration wait) {
    FlightKey key = new FlightKey(profile, rejectedToken);
    CompletableFuture<Token> mine = new CompletableFuture<>();
    CompletableFuture<Token> running = flights.putIfAbsent(key, mine);
    if (running != null) {
      return running;
    }
    if (!rejectedToken.isEmpty()) {
      // A report that lost the race to a finished RPC: its answer is already the local copy.
      Entry e = cache.get(profile);
      if (e != null && !e.token().accessToken().equals(rejectedToken)) {
        flights.remove(key, mine);
        mine.complete(e.token());
        return mine;
      }
    }
    // The answer is stored before the flight ends, so a caller that finds no flight finds it.
    fetch(profile, minTtl, rejectedToken, wait)
        .whenComplete(
            (t, err) -> {
              flights.remove(key, mine);
              if (err != null) {
                mine.completeExceptionally(TokenvendException.unwrap(err));
              } else {
                mine.complete(t);
              }
            });
    return mine;
  }

  /**
   * One RPC. {@code min_ttl} is sent only when the caller asked for one: a min TTL derived from
   * the margin would make tokenvend replace a token it would otherwise serve from its cache.
   */
  private CompletableFuture<Token> fetch(
      String profile, Duration minTtl, String rejectedToken, Duration wait) {
    long generation = generation(profile);
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
    // The RPC lives at least the client's timeout, however short the starter's wait: callers
    // that join it may wait longer, and its answer fills the cache for the next one.
    Duration deadline = wait.compareTo(callTimeout) > 0 ? wait : callTimeout;
    CompletableFuture<Token> result = new CompletableFuture<>();
    stub.withDeadlineAfter(deadline.toNanos(), TimeUnit.NANOSECONDS)
        .getToken(
            req.build(),
            new StreamObserver<io.tokenvend.v1.Token>() {
              @Override
              public void onNext(io.tokenvend.v1.Token value) {
                result.complete(store(profile, Token.fromProto(value), generation));
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

  /**
   * Makes {@code fresh} the local copy unless it is a token reported after its RPC began, or
   * expires before the copy held now. Returns {@code fresh}.
   */
  private Token store(String profile, Token fresh, long generation) {
    Rejected r = rejected.get(profile);
    if (r != null && r.generation() > generation && fresh.accessToken().equals(r.token())) {
      return fresh;
    }
    Instant now = clock.instant();
    Entry stored =
        cache.compute(
            profile,
            (k, old) -> {
              if (old != null && old.token().accessToken().equals(fresh.accessToken())) {
                // The same token again keeps the margin of its first arrival, or it would
                // look fresh again each time tokenvend hands it back.
                return old;
              }
              if (old != null && fresh.expiresAt().isBefore(old.token().expiresAt())) {
                return old; // a slow RPC must not replace a newer token
              }
              return new Entry(fresh, margin(Duration.between(now, fresh.expiresAt())));
            });
    if (stored.token().remaining(clock).compareTo(stored.margin()) <= 0) {
      // tokenvend had nothing newer: serve this copy, and ask again only after a pause.
      holdUntil.put(profile, now.plus(ASK_INTERVAL));
    } else {
      holdUntil.remove(profile);
    }
    return fresh;
  }

  /** A tenth of the lifetime, at most the cap. */
  private Duration margin(Duration lifetime) {
    if (lifetime.isNegative()) {
      return Duration.ZERO;
    }
    Duration tenth = lifetime.dividedBy(10);
    return tenth.compareTo(maxRefreshMargin) < 0 ? tenth : maxRefreshMargin;
  }

  private Duration checkTimeout(Duration timeout) {
    if (timeout == null) {
      return callTimeout;
    }
    if (timeout.isNegative() || timeout.isZero()) {
      throw new IllegalArgumentException("timeout must be positive");
    }
    return timeout;
  }

  private static void checkProfile(String profile) {
    if (profile == null || profile.isEmpty()) {
      throw new IllegalArgumentException("profile must not be empty");
    }
  }

  /** Waits for a caller's future; its timeout is already part of it. */
  private static Token await(String profile, CompletableFuture<Token> future)
      throws TokenvendException {
    try {
      return future.get();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      future.cancel(false);
      throw new TokenvendException(
          profile, Status.Code.CANCELLED, "CANCELLED: interrupted while waiting for tokenvend", e);
    } catch (ExecutionException e) {
      throw TokenvendException.of(profile, e.getCause());
    }
  }

  /** Configures a {@link TokenClient}. */
  public static final class Builder {
    private String target;
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private Channel channel;
    private Path serviceAccountTokenFile;
    private Duration maxRefreshMargin = DEFAULT_MAX_REFRESH_MARGIN;
    private Duration callTimeout = DEFAULT_TIMEOUT;
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

    /**
     * The largest refresh margin; 60 s unless set. A copy is renewed once a tenth of its
     * lifetime is left, or this much if that is less.
     */
    public Builder maxRefreshMargin(Duration cap) {
      if (cap.isNegative()) {
        throw new IllegalArgumentException("maxRefreshMargin must not be negative");
      }
      this.maxRefreshMargin = cap;
      return this;
    }

    /**
     * How long a call waits for tokenvend when its caller gives no timeout, and the shortest
     * deadline of an RPC; 10 s unless set.
     */
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
