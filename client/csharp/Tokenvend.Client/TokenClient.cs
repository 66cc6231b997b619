using System;
using System.Collections.Concurrent;
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
/// var token = await tokens.GetTokenAsync("jakamo");
/// foreach (var (name, value) in token.Headers) request.Headers.TryAddWithoutValidation(name, value);
/// </code>
/// </example>
/// <remarks>
/// Errors from tokenvend surface as <see cref="RpcException"/>; its
/// <see cref="RpcException.StatusCode"/> tells them apart: <c>NotFound</c> for an unknown
/// profile, <c>Unavailable</c> when the identity provider is down (retryable),
/// <c>FailedPrecondition</c> when it refused the profile's credentials, <c>OutOfRange</c>
/// when the min TTL is longer than the profile's tokens live.
/// </remarks>
public sealed class TokenClient : IDisposable
{
    private readonly TokenService.TokenServiceClient _stub;
    private readonly GrpcChannel? _ownedChannel;
    private readonly ServiceAccountTokenFile? _serviceAccountToken;
    private readonly TimeSpan _refreshMargin;
    private readonly TimeSpan _callTimeout;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<string, Slot> _slots = new(StringComparer.Ordinal);
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
        ArgumentOutOfRangeException.ThrowIfLessThan(options.RefreshMargin, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.CallTimeout, TimeSpan.Zero);
        _stub = new TokenService.TokenServiceClient(callInvoker);
        _refreshMargin = options.RefreshMargin;
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
    /// Returns a token for <paramref name="profile"/> that stays valid at least
    /// <paramref name="minTtl"/> (default zero) beyond the refresh margin: the local copy when
    /// it qualifies, else a fresh answer from tokenvend. Concurrent callers for one profile
    /// share a single call to tokenvend.
    /// </summary>
    /// <exception cref="RpcException">tokenvend refused or could not be reached.</exception>
    public Task<VendedToken> GetTokenAsync(string profile, TimeSpan? minTtl = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        var ttl = minTtl ?? TimeSpan.Zero;
        ArgumentOutOfRangeException.ThrowIfLessThan(ttl, TimeSpan.Zero, nameof(minTtl));

        var slot = _slots.GetOrAdd(profile, static _ => new Slot());
        var cached = slot.Token;
        if (cached is not null && Remaining(cached) > _refreshMargin + ttl)
        {
            return Task.FromResult(cached);
        }
        return RefreshAsync(slot, profile, ttl, cancellationToken);
    }

    /// <summary>
    /// Reports that the upstream API rejected <paramref name="rejectedAccessToken"/> (HTTP 401)
    /// and returns its replacement. The local copy is dropped only if it is that token; if it
    /// already holds a newer valid one (another caller reported first), that one is returned
    /// without a call. Otherwise tokenvend is asked with <c>rejected_token</c>, and replaces
    /// the token once however many callers report it.
    /// </summary>
    /// <exception cref="RpcException">tokenvend refused or could not be reached.</exception>
    public async Task<VendedToken> RejectAsync(string profile, string rejectedAccessToken, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(profile);
        ArgumentException.ThrowIfNullOrEmpty(rejectedAccessToken);

        var slot = _slots.GetOrAdd(profile, static _ => new Slot());
        await slot.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var cached = slot.Token;
            if (cached is not null && !string.Equals(cached.AccessToken, rejectedAccessToken, StringComparison.Ordinal)
                && Remaining(cached) > TimeSpan.Zero)
            {
                return cached;
            }
            if (cached is not null && string.Equals(cached.AccessToken, rejectedAccessToken, StringComparison.Ordinal))
            {
                slot.Token = null;
            }
            var fresh = await FetchAsync(profile, null, rejectedAccessToken, cancellationToken).ConfigureAwait(false);
            slot.Token = fresh;
            return fresh;
        }
        finally
        {
            slot.Gate.Release();
        }
    }

    /// <summary>Closes the channel if this client created it. Cached tokens are dropped.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        _slots.Clear();
        _ownedChannel?.Dispose();
    }

    private async Task<VendedToken> RefreshAsync(Slot slot, string profile, TimeSpan minTtl, CancellationToken cancellationToken)
    {
        // Single flight: whoever waited here while another caller refreshed finds the new
        // token on the re-check below and makes no call of its own.
        await slot.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var cached = slot.Token;
            if (cached is not null && Remaining(cached) > _refreshMargin + minTtl)
            {
                return cached;
            }
            try
            {
                var fresh = await FetchAsync(profile, minTtl, null, cancellationToken).ConfigureAwait(false);
                slot.Token = fresh;
                return fresh;
            }
            catch (RpcException e) when (IsTransient(e.StatusCode) && cached is not null && Remaining(cached) > minTtl)
            {
                // tokenvend restarting or briefly unreachable: the copy inside the refresh
                // margin is still valid for this caller, which beats failing its request.
                return cached;
            }
        }
        finally
        {
            slot.Gate.Release();
        }
    }

    private async Task<VendedToken> FetchAsync(string profile, TimeSpan? minTtl, string? rejectedAccessToken, CancellationToken cancellationToken)
    {
        var request = new GetTokenRequest { Profile = profile };
        if (minTtl is { } ttl && ttl > TimeSpan.Zero)
        {
            request.MinTtl = Duration.FromTimeSpan(ttl);
        }
        if (rejectedAccessToken is not null)
        {
            request.RejectedToken = rejectedAccessToken;
        }

        Metadata? headers = null;
        if (_serviceAccountToken is not null)
        {
            var identity = _serviceAccountToken.Read();
            if (identity.Length > 0)
            {
                headers = new Metadata { { "authorization", "Bearer " + identity } };
            }
        }

        var deadline = _time.GetUtcNow().UtcDateTime + _callTimeout;
        var token = await _stub.GetTokenAsync(request, new CallOptions(headers, deadline, cancellationToken)).ConfigureAwait(false);
        return new VendedToken(token);
    }

    private TimeSpan Remaining(VendedToken token) => token.ExpiresAt - _time.GetUtcNow();

    private static bool IsTransient(StatusCode code) =>
        code is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted;

    private sealed class Slot
    {
        // Never disposed: it has no wait handle unless AvailableWaitHandle is touched, and a
        // caller still waiting at Dispose() must not get an ObjectDisposedException from it.
        public readonly SemaphoreSlim Gate = new(1, 1);

        // Read without the gate on the fast path.
        public volatile VendedToken? Token;
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
