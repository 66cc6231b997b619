using System;
using System.Collections.Concurrent;
using System.IO;
using System.Threading;
using System.Threading.Tasks;
using Grpc.Core;
using Grpc.Net.Client;
using Tokenvend.V1;
using Duration = Google.Protobuf.WellKnownTypes.Duration;

namespace Tokenvend.Client;

/// <summary>
/// Gets access tokens from tokenvend by profile name and keeps a local copy of each, so that
/// most calls make no round trip. Thread-safe; make one per process and share it.
/// </summary>
/// <example>
/// <code>
/// using var tokens = new TokenClient("127.0.0.1:50051");
/// Token token = await tokens.GetTokenAsync("jakamo");
/// foreach (var (name, value) in token.Headers) request.Headers.TryAddWithoutValidation(name, value);
/// </code>
/// </example>
/// <remarks>
/// Errors from tokenvend surface as <see cref="TokenvendException"/>, an
/// <see cref="System.Net.Http.HttpRequestException"/> whose <see cref="TokenvendException.GrpcStatusCode"/>
/// tells them apart (<c>NotFound</c> for an unknown profile, <c>Unavailable</c> when tokenvend or
/// the identity provider is down, <c>FailedPrecondition</c> when the provider refused the
/// profile's credentials) and whose <see cref="TokenvendException.Retryable"/> says whether
/// to try again.
/// </remarks>
public sealed class TokenClient : IDisposable
{
    private readonly TokenService.TokenServiceClient _stub;
    private readonly GrpcChannel? _ownedChannel;
    private readonly ServiceAccountTokenFile? _serviceAccountToken;
    // tokenvend replaces a token at about 80 % of its lifetime; a margin of 10 % means the
    // client's next call, at 90 %, finds the replacement in tokenvend's cache.
    private const int MarginDivisor = 10;
    private static readonly TimeSpan RetryInterval = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan WatchBackoffStart = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan WatchBackoffMax = TimeSpan.FromSeconds(30);

    private readonly TimeSpan _maxMargin;
    private readonly TimeSpan _callTimeout;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, Slot> _slots = new(StringComparer.Ordinal);
    // Cancelled by Dispose, which ends every watch.
    private readonly CancellationTokenSource _life = new();
    private volatile bool _disposed;

    /// <summary>Connects to tokenvend at <paramref name="address"/> (<c>host:port</c>, plaintext).</summary>
    public TokenClient(string address)
        : this(new TokenClientOptions { Address = address })
    {
    }

    /// <summary>Connects to tokenvend with the given options; the channel is owned and disposed by this client.</summary>
    public TokenClient(TokenClientOptions options)
        : this(CreateChannel(options), options, owned: true)
    {
    }

    /// <summary>
    /// Uses a channel or call invoker the caller built and owns, e.g. one with interceptors:
    /// <c>new TokenClient(channel.Intercept(myInterceptor), options)</c>.
    /// <see cref="TokenClientOptions.Address"/>, <see cref="TokenClientOptions.Credentials"/> and
    /// <see cref="TokenClientOptions.HttpHandler"/> are ignored.
    /// </summary>
    public TokenClient(CallInvoker callInvoker, TokenClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(callInvoker);
        options ??= new TokenClientOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxRefreshMargin, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.CallTimeout, TimeSpan.Zero);
        _stub = new TokenService.TokenServiceClient(callInvoker);
        _maxMargin = options.MaxRefreshMargin;
        _callTimeout = options.CallTimeout;
        _time = options.TimeProvider;
        if (!string.IsNullOrEmpty(options.ServiceAccountTokenPath))
        {
            _serviceAccountToken = new ServiceAccountTokenFile(options.ServiceAccountTokenPath, _time);
        }
    }

    private TokenClient(GrpcChannel channel, TokenClientOptions options, bool owned)
        : this(channel.CreateCallInvoker(), options)
    {
        if (owned)
        {
            _ownedChannel = channel;
        }
    }

    /// <summary>
    /// Returns a token for <paramref name="profile"/>: the local copy while it has more than its
    /// refresh margin left, else one from tokenvend. The margin is 10 % of the token's lifetime
    /// (from when this client received it), at most <see cref="TokenClientOptions.MaxRefreshMargin"/>.
    /// Concurrent callers for one profile share a single call to tokenvend, which carries no
    /// <c>min_ttl</c>.
    /// </summary>
    /// <remarks>
    /// While tokenvend cannot be reached, or answers with a token that is itself inside its
    /// margin (it could not refresh), the local copy is returned as long as it has not expired,
    /// and tokenvend is asked again at most once a second. <paramref name="cancellationToken"/>
    /// bounds the call; each call to tokenvend also has a deadline of
    /// <see cref="TokenClientOptions.CallTimeout"/> (10 s).
    /// </remarks>
    /// <exception cref="TokenvendException">tokenvend refused or could not be reached.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired.</exception>
    public Task<Token> GetTokenAsync(string profile, CancellationToken cancellationToken = default) =>
        GetTokenAsync(profile, TimeSpan.Zero, cancellationToken);

    /// <summary>
    /// Like <see cref="GetTokenAsync(string, CancellationToken)"/>, for a token that stays valid
    /// at least <paramref name="minTtl"/>: the local copy serves only while it has more than
    /// <paramref name="minTtl"/> plus its margin left, and the call to tokenvend carries
    /// <paramref name="minTtl"/> (<c>OutOfRange</c> when the profile's tokens live shorter).
    /// </summary>
    /// <exception cref="TokenvendException">tokenvend refused or could not be reached.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired.</exception>
    public Task<Token> GetTokenAsync(string profile, TimeSpan minTtl, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        ArgumentOutOfRangeException.ThrowIfLessThan(minTtl, TimeSpan.Zero);

        var slot = SlotOf(profile);
        var copy = slot.Current;
        if (Usable(copy, minTtl))
        {
            return Task.FromResult(copy!.Token);
        }
        return RefreshAsync(slot, profile, minTtl, cancellationToken);
    }

    /// <summary>
    /// Reports that the upstream API refused <paramref name="rejectedAccessToken"/> (HTTP 401)
    /// and returns the token to use instead.
    /// </summary>
    /// <remarks>
    /// Reports are coalesced: concurrent reports of the local copy make one call to tokenvend
    /// (with <c>rejected_token</c>), the others waiting for its answer, and a report of a token
    /// that is no longer the local copy makes no call at all: the local copy already replaced
    /// it. tokenvend itself replaces a token once however many clients report it.
    /// </remarks>
    /// <exception cref="TokenvendException">tokenvend refused or could not be reached.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> fired.</exception>
    public async Task<Token> RejectAsync(string profile, string rejectedAccessToken, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        ArgumentException.ThrowIfNullOrEmpty(rejectedAccessToken);

        var slot = SlotOf(profile);
        if (Replaced(slot.Current, rejectedAccessToken) is { } current)
        {
            return current;
        }
        await slot.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Whoever waited here while another caller reported the same token finds its
            // replacement now, and makes no call of its own.
            if (Replaced(slot.Current, rejectedAccessToken) is { } replaced)
            {
                return replaced;
            }
            // Until the replacement arrives, GetTokenAsync callers wait at the gate rather than
            // take the refused token.
            slot.Current = null;
            try
            {
                var fresh = await FetchAsync(profile, TimeSpan.Zero, rejectedAccessToken, cancellationToken).ConfigureAwait(false);
                return Keep(slot, fresh).Token;
            }
            catch (RpcException e)
            {
                throw Failure(profile, e, cancellationToken);
            }
        }
        finally
        {
            slot.Gate.Release();
        }
    }

    /// <summary>
    /// Keeps the local copy of <paramref name="profile"/>'s token current through tokenvend's
    /// <c>WatchToken</c> stream, so that <see cref="GetTokenAsync(string, CancellationToken)"/>
    /// answers from it without waiting: tokenvend sends each replacement as it makes it, well
    /// before the copy reaches its margin. A broken stream is reopened with backoff (100 ms
    /// doubling to 30 s, with jitter); meanwhile GetTokenAsync works as without a watch.
    /// </summary>
    /// <returns>
    /// The running watch: dispose it (or this client) to stop it. Its <see cref="TokenWatch.Ready"/>
    /// completes when the first token is in the local copy, or fails with the first attempt's
    /// <see cref="TokenvendException"/>; after a retryable one the watch goes on trying, after
    /// another (an unknown profile) it stops.
    /// </returns>
    public TokenWatch Watch(string profile)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        var slot = SlotOf(profile);
        var watch = new TokenWatch(profile, CancellationTokenSource.CreateLinkedTokenSource(_life.Token));
        watch.Loop = Task.Run(() => RunWatchAsync(slot, profile, watch));
        return watch;
    }

    /// <summary>Stops every watch, and closes the channel if this client created it. Cached tokens are dropped.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _life.Cancel();
        _slots.Clear();
        _ownedChannel?.Dispose();
    }

    private async Task<Token> RefreshAsync(Slot slot, string profile, TimeSpan minTtl, CancellationToken cancellationToken)
    {
        // Single flight: whoever waited here while another caller refreshed finds the new
        // token on the re-check below and makes no call of its own.
        await slot.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var copy = slot.Current;
            if (Usable(copy, minTtl))
            {
                return copy!.Token;
            }
            try
            {
                var fresh = await FetchAsync(profile, minTtl, null, cancellationToken).ConfigureAwait(false);
                return Keep(slot, fresh).Token;
            }
            catch (RpcException e) when (TokenvendException.IsRetryableCode(e.StatusCode)
                && copy is not null && copy.Token.ExpiresAt - _time.GetUtcNow() > minTtl)
            {
                // tokenvend restarting or briefly unreachable: the copy inside its margin is
                // still valid, which beats failing the caller's request. Asked again in a second.
                slot.Current = copy!.RetryingAt(_time.GetUtcNow() + RetryInterval);
                return copy.Token;
            }
            catch (RpcException e)
            {
                throw Failure(profile, e, cancellationToken);
            }
        }
        finally
        {
            slot.Gate.Release();
        }
    }

    private async Task RunWatchAsync(Slot slot, string profile, TokenWatch watch)
    {
        var stop = watch.StopToken;
        var backoff = WatchBackoffStart;
        while (!stop.IsCancellationRequested)
        {
            RpcException failure;
            try
            {
                var request = new WatchTokenRequest { Profile = profile };
                using var call = _stub.WatchToken(request, new CallOptions(AuthorizationHeaders(), cancellationToken: stop));
                while (await call.ResponseStream.MoveNext(stop).ConfigureAwait(false))
                {
                    var message = call.ResponseStream.Current;
                    if (message.AccessToken.Length == 0)
                    {
                        continue;
                    }
                    // The stream sends tokenvend's current token: it replaces the local copy.
                    Keep(slot, new Token(message, _time.GetUtcNow()));
                    backoff = WatchBackoffStart;
                    watch.Settle(null);
                }
                // tokenvend ended the stream: it is shutting down, or the profile changed.
                failure = new RpcException(new Status(StatusCode.Unavailable, "tokenvend ended the watch"));
            }
            catch (Exception) when (stop.IsCancellationRequested)
            {
                break;
            }
            catch (RpcException e)
            {
                failure = e;
            }
            catch (Exception e)
            {
                // Not a gRPC failure: nothing a reconnect would fix.
                failure = new RpcException(new Status(StatusCode.Internal, e.Message, e));
            }

            var error = new TokenvendException(profile, failure);
            watch.Settle(error);
            if (!error.Retryable)
            {
                return;
            }
            // Jitter over the upper half, so that clients cut off together do not return together.
            var sleep = backoff / 2 + backoff / 2 * Random.Shared.NextDouble();
            backoff = backoff * 2 < WatchBackoffMax ? backoff * 2 : WatchBackoffMax;
            try
            {
                await Task.Delay(sleep, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
        watch.Settle(new OperationCanceledException(stop));
    }

    private async Task<Token> FetchAsync(string profile, TimeSpan minTtl, string? rejectedAccessToken, CancellationToken cancellationToken)
    {
        var request = new GetTokenRequest { Profile = profile };
        if (minTtl > TimeSpan.Zero)
        {
            request.MinTtl = Duration.FromTimeSpan(minTtl);
        }
        if (rejectedAccessToken is not null)
        {
            request.RejectedToken = rejectedAccessToken;
        }

        // The caller's token (an HttpClient's timeout is linked into it) ends the call when it
        // fires first; the deadline bounds it when the caller gave none.
        var deadline = _time.GetUtcNow().UtcDateTime + _callTimeout;
        var token = await _stub.GetTokenAsync(request, new CallOptions(AuthorizationHeaders(), deadline, cancellationToken)).ConfigureAwait(false);
        if (token.AccessToken.Length == 0)
        {
            // A conforming server never sends one; the cache must not hold it.
            throw new RpcException(new Status(StatusCode.Internal, "tokenvend returned an empty access token"));
        }
        return new Token(token, _time.GetUtcNow());
    }

    private Metadata? AuthorizationHeaders()
    {
        if (_serviceAccountToken is null)
        {
            return null;
        }
        string identity;
        try
        {
            identity = _serviceAccountToken.Read();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new RpcException(new Status(StatusCode.Unauthenticated, "reading the ServiceAccount token: " + e.Message));
        }
        return identity.Length > 0 ? new Metadata { { "authorization", "Bearer " + identity } } : null;
    }

    /// <summary>The exception for a failed call: cancellation by the caller stays cancellation.</summary>
    private static Exception Failure(string profile, RpcException e, CancellationToken cancellationToken) =>
        e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested
            ? new OperationCanceledException("tokenvend: the call for profile \"" + profile + "\" was cancelled", e, cancellationToken)
            : new TokenvendException(profile, e);

    private bool Usable(Copy? copy, TimeSpan minTtl)
    {
        if (copy is null)
        {
            return false;
        }
        var now = _time.GetUtcNow();
        var left = copy.Token.ExpiresAt - now;
        return left > copy.Margin + minTtl || (left > minTtl && now < copy.RetryAt);
    }

    /// <summary>The local copy if it is another token than <paramref name="rejected"/> and still valid.</summary>
    private Token? Replaced(Copy? copy, string rejected) =>
        copy is not null && !string.Equals(copy.Token.AccessToken, rejected, StringComparison.Ordinal)
            && copy.Token.ExpiresAt > _time.GetUtcNow()
            ? copy.Token
            : null;

    /// <summary>Makes <paramref name="token"/> the local copy, with its margin.</summary>
    private Copy Keep(Slot slot, Token token)
    {
        var previous = slot.Current;
        TimeSpan margin;
        if (previous is not null && string.Equals(previous.Token.AccessToken, token.AccessToken, StringComparison.Ordinal))
        {
            // The same token again keeps the margin it had, so that one tokenvend could not
            // replace is seen to be inside it.
            margin = previous.Margin;
        }
        else
        {
            var lifetime = token.ExpiresAt - token.ReceivedAt;
            margin = lifetime <= TimeSpan.Zero ? TimeSpan.Zero : lifetime / MarginDivisor;
            if (margin > _maxMargin)
            {
                margin = _maxMargin;
            }
        }
        var now = _time.GetUtcNow();
        var retryAt = token.ExpiresAt - now <= margin ? now + RetryInterval : DateTimeOffset.MinValue;
        var copy = new Copy(token, margin, retryAt);
        slot.Current = copy;
        return copy;
    }

    private Slot SlotOf(string profile) => _slots.GetOrAdd(profile, static _ => new Slot());

    /// <summary>A local copy: the token, its margin, and until when it is served inside the margin.</summary>
    private sealed record Copy(Token Token, TimeSpan Margin, DateTimeOffset RetryAt)
    {
        public Copy RetryingAt(DateTimeOffset at) => this with { RetryAt = at };
    }

    private sealed class Slot
    {
        // Never disposed: it has no wait handle unless AvailableWaitHandle is touched, and a
        // caller still waiting at Dispose() must not get an ObjectDisposedException from it.
        public readonly SemaphoreSlim Gate = new(1, 1);

        // Read without the gate on the fast path; replaced whole, never changed in place.
        public volatile Copy? Current;
    }

    private static GrpcChannel CreateChannel(TokenClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentException.ThrowIfNullOrEmpty(options.Address);
        var secure = options.Credentials is not null && !ReferenceEquals(options.Credentials, ChannelCredentials.Insecure);
        var address = options.Address.Contains("://", StringComparison.Ordinal)
            ? options.Address
            : (secure ? "https://" : "http://") + options.Address;
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            Credentials = options.Credentials,
            HttpHandler = options.HttpHandler,
        });
    }
}
