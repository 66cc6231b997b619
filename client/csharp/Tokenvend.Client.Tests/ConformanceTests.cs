using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Http;
using System.Threading;
using System.Threading.Tasks;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Xunit;

namespace Tokenvend.Client.Tests;

/// <summary>
/// The conformance scenarios every tokenvend client runs (client/README.md), against the real
/// server. <c>Conformance_http_401_retried_once</c> is in <see cref="TokenvendHandlerTests"/>.
/// </summary>
[Collection(TokenvendCollection.Name)]
public sealed class ConformanceTests : IDisposable
{
    // Short-lived tokens live 10 s: long enough for tokenvend's refresh at ~80 % and the
    // client's margin at 90 % to be a second apart, short enough for a test.
    private static readonly TimeSpan ShortLifetime = TimeSpan.FromSeconds(10);

    private readonly TokenvendServer _server;
    private readonly GrpcChannel _channel;
    private readonly CountingInterceptor _rpcs = new();

    public ConformanceTests(TokenvendServer server)
    {
        _server = server;
        _channel = GrpcChannel.ForAddress(server.HttpAddress);
    }

    public void Dispose() => _channel.Dispose();

    private TokenClient CountedClient(TokenClientOptions? options = null) => new(_channel.Intercept(_rpcs), options);

    /// <summary>A client of a server the test started, counting its RPCs.</summary>
    private sealed class Counted : IDisposable
    {
        private readonly GrpcChannel _channel;

        public Counted(string address, TokenClientOptions? options = null)
        {
            _channel = GrpcChannel.ForAddress("http://" + address);
            Client = new TokenClient(_channel.Intercept(Rpcs), options);
        }

        public CountingInterceptor Rpcs { get; } = new();

        public TokenClient Client { get; }

        public void Dispose()
        {
            Client.Dispose();
            _channel.Dispose();
        }
    }

    private static HttpClient HttpClientFor(TokenClient tokens, string profile, TimeSpan? timeout = null)
    {
        var http = new HttpClient(new TokenvendHandler(tokens, profile, new SocketsHttpHandler { UseProxy = false }));
        if (timeout is { } t)
        {
            http.Timeout = t;
        }
        return http;
    }

    [Fact]
    public async Task Conformance_cache_hit_no_rpc()
    {
        using var tokens = CountedClient();

        var first = await tokens.GetTokenAsync("demo");
        var second = await tokens.GetTokenAsync("demo");

        Assert.Same(first, second);
        Assert.Equal(1, _rpcs.Calls);
    }

    [Fact]
    public async Task Conformance_single_flight()
    {
        using var tokens = CountedClient();
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var callers = Enumerable.Range(0, 50).Select(async _ =>
        {
            await start.Task;
            return await tokens.GetTokenAsync("demo");
        }).ToArray();
        start.SetResult();
        var all = await Task.WhenAll(callers);

        Assert.All(all, token => Assert.Same(all[0], token));
        Assert.Equal(1, _rpcs.Calls);
    }

    [Fact]
    public async Task Conformance_reject_coalesced()
    {
        using var tokens = CountedClient();
        var old = await tokens.GetTokenAsync("demo");

        var fresh = await Task.WhenAll(Enumerable.Range(0, 100)
            .Select(_ => Task.Run(() => tokens.RejectAsync("demo", old.AccessToken))));

        Assert.InRange(_rpcs.Calls - 1, 1, 2);
        Assert.All(fresh, token => Assert.NotEqual(old.AccessToken, token.AccessToken));
        Assert.All(fresh, token => Assert.Equal(fresh[0].AccessToken, token.AccessToken));

        // A late report of a token that is no longer the local copy makes no RPC.
        var calls = _rpcs.Calls;
        Assert.Same(fresh[0], await tokens.RejectAsync("demo", old.AccessToken));
        Assert.Same(fresh[0], await tokens.GetTokenAsync("demo"));
        Assert.Equal(calls, _rpcs.Calls);
    }

    [Fact]
    public async Task Conformance_always_401_bounded()
    {
        // serve --dev replaces every reported token, so each call is retried once.
        await using var upstream = new RecordingHttpServer(_ => HttpStatusCode.Unauthorized);
        using var tokens = CountedClient();
        using var http = HttpClientFor(tokens, "demo");

        const int calls = 4;
        for (var i = 0; i < calls; i++)
        {
            using var response = await http.GetAsync(upstream.BaseAddress);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }
        Assert.Equal(2 * calls, upstream.Requests.Count);
        Assert.InRange(_rpcs.Calls, 1, 2 * calls);

        // At the same time: still each sent twice, the reports coalesced.
        await using var upstream2 = new RecordingHttpServer(_ => HttpStatusCode.Unauthorized);
        var rpcsBefore = _rpcs.Calls;
        const int concurrent = 20;
        var responses = await Task.WhenAll(Enumerable.Range(0, concurrent).Select(_ => http.GetAsync(upstream2.BaseAddress)));
        Assert.All(responses, response => Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode));
        foreach (var response in responses)
        {
            response.Dispose();
        }
        Assert.Equal(2 * concurrent, upstream2.Requests.Count);
        Assert.InRange(_rpcs.Calls - rpcsBefore, 1, 2 * concurrent);
    }

    [Fact]
    public async Task Conformance_deadline_bounds_fetch()
    {
        using var hung = new HungListener();
        using var tokens = new TokenClient(hung.Address);
        using var http = HttpClientFor(tokens, "demo", TimeSpan.FromSeconds(1));
        await using var upstream = new RecordingHttpServer(_ => HttpStatusCode.OK);

        // HttpClient.Timeout reaches the token fetch through the request's CancellationToken:
        // .NET's usual timeout exception, with the cause inside, and retryable.
        var clock = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<TaskCanceledException>(() => http.GetAsync(upstream.BaseAddress));
        Assert.True(clock.Elapsed < TimeSpan.FromMilliseconds(1500), $"took {clock.Elapsed}");
        Assert.IsType<TimeoutException>(error.InnerException);
        Assert.True(TokenvendException.IsRetryable(error));
        Assert.Empty(upstream.Requests);

        // Without a caller deadline, CallTimeout (10 s by default) bounds each RPC.
        using var bounded = new TokenClient(new TokenClientOptions { Address = hung.Address, CallTimeout = TimeSpan.FromSeconds(1) });
        clock.Restart();
        var timeout = await Assert.ThrowsAsync<TokenvendException>(() => bounded.GetTokenAsync("demo"));
        Assert.True(clock.Elapsed < TimeSpan.FromMilliseconds(1500), $"took {clock.Elapsed}");
        Assert.Equal(StatusCode.DeadlineExceeded, timeout.GrpcStatusCode);
        Assert.True(timeout.Retryable);
        Assert.Equal(TimeSpan.FromSeconds(10), new TokenClientOptions().CallTimeout);
    }

    [Fact]
    public async Task Conformance_error_categories()
    {
        using var tokens = new TokenClient(_server.Address);
        var notFound = await Assert.ThrowsAsync<TokenvendException>(() => tokens.GetTokenAsync("no-such-profile"));
        Assert.IsAssignableFrom<HttpRequestException>(notFound);
        Assert.Equal(StatusCode.NotFound, notFound.GrpcStatusCode);
        Assert.False(notFound.Retryable);
        Assert.Contains("no-such-profile", notFound.Message);

        // Nothing listens on a port just released.
        using var down = new TokenClient($"127.0.0.1:{TokenvendServer.FreePort()}");
        var unavailable = await Assert.ThrowsAsync<TokenvendException>(() => down.GetTokenAsync("demo"));
        Assert.Equal(StatusCode.Unavailable, unavailable.GrpcStatusCode);
        Assert.True(unavailable.Retryable);
        Assert.True(TokenvendException.IsRetryable(unavailable));
    }

    [Fact]
    public async Task Conformance_refresh_margin_fraction()
    {
        await using var issuer = new TestIssuer();
        issuer.Register("short", ShortLifetime);
        await using var server = await ConfiguredTokenvend.StartAsync(ConfiguredTokenvend.ServerYaml + "profiles:\n" + issuer.ProfileYaml("short"));
        using var counted = new Counted(server.Address);
        var tokens = counted.Client;

        var first = await tokens.GetTokenAsync("short");
        var received = DateTimeOffset.UtcNow;
        var current = first.AccessToken;
        var providerAtChange = -1;
        // A tight loop across the margin and past the first token's expiry.
        while (DateTimeOffset.UtcNow - received < ShortLifetime * 1.5)
        {
            var token = await tokens.GetTokenAsync("short");
            Assert.True(token.ExpiresAt > DateTimeOffset.UtcNow, "served an expired token");
            if (token.AccessToken != current && providerAtChange < 0)
            {
                providerAtChange = issuer.Issued("short");
            }
            current = token.AccessToken;
            await Task.Delay(1);
        }

        var requests = counted.Rpcs.Requests.ToArray();
        Assert.All(requests, r => Assert.False(r.MinTtl, "the client sent a min_ttl of its own"));
        Assert.InRange(requests.Length, 2, 3);
        // The first token served until 90 % of its life, then replaced by the one tokenvend
        // had fetched at ~80 %: no provider request waited on the client's call.
        Assert.InRange(requests[1].At - received, ShortLifetime * 0.85, ShortLifetime * 0.95);
        Assert.Equal(2, providerAtChange);
    }

    [Fact]
    public async Task Conformance_watch_live_copy()
    {
        using var tokens = CountedClient();
        await using var watch = tokens.Watch("demo");
        await watch.Ready.WaitAsync(TimeSpan.FromSeconds(10));
        var token = await tokens.GetTokenAsync("demo");

        // Another process reports the token: tokenvend replaces it, and the stream brings the
        // replacement into this client's copy.
        using var other = new TokenClient(_server.Address);
        var fresh = await other.RejectAsync("demo", token.AccessToken);
        Assert.NotEqual(token.AccessToken, fresh.AccessToken);
        var giveUp = DateTime.UtcNow.AddSeconds(3);
        while ((await tokens.GetTokenAsync("demo")).AccessToken != fresh.AccessToken)
        {
            Assert.True(DateTime.UtcNow < giveUp, "the watched copy did not follow the replacement");
            await Task.Delay(10);
        }
        Assert.Equal(0, _rpcs.Calls);

        await using var unknown = tokens.Watch("no-such-profile");
        var error = await Assert.ThrowsAsync<TokenvendException>(() => unknown.Ready.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(StatusCode.NotFound, error.GrpcStatusCode);
    }

    [Fact]
    public async Task Conformance_stale_copy_while_unreachable()
    {
        await using var issuer = new TestIssuer();
        issuer.Register("stale", ShortLifetime);
        await using var server = await ConfiguredTokenvend.StartAsync(ConfiguredTokenvend.ServerYaml + "profiles:\n" + issuer.ProfileYaml("stale"));
        using var tokens = new TokenClient(server.Address);
        var first = await tokens.GetTokenAsync("stale");
        using var refuser = new TokenClient(server.Address);
        Assert.Equal(first.AccessToken, (await refuser.GetTokenAsync("stale")).AccessToken);
        await server.StopAsync();

        // A copy the API refused is no fallback: with its report failing, it is not served.
        var reportFailed = await Assert.ThrowsAsync<TokenvendException>(() => refuser.RejectAsync("stale", first.AccessToken));
        Assert.True(reportFailed.Retryable);
        await Assert.ThrowsAsync<TokenvendException>(() => refuser.GetTokenAsync("stale"));

        // Inside the margin the client asks, finds tokenvend gone, and serves the copy.
        await Task.Delay(first.ExpiresAt - DateTimeOffset.UtcNow - ShortLifetime / 20);
        for (var i = 0; i < 3; i++)
        {
            Assert.Same(first, await tokens.GetTokenAsync("stale"));
        }
        // An expired copy is never served.
        await Task.Delay(first.ExpiresAt - DateTimeOffset.UtcNow + TimeSpan.FromMilliseconds(50));
        var error = await Assert.ThrowsAsync<TokenvendException>(() => tokens.GetTokenAsync("stale"));
        Assert.Equal(StatusCode.Unavailable, error.GrpcStatusCode);
        Assert.True(error.Retryable);
    }

    [Fact]
    public async Task Conformance_service_account_token()
    {
        await using var issuer = new TestIssuer();
        issuer.Register("orders-api", TimeSpan.FromSeconds(300));
        using var accounts = new ServiceAccounts();
        var config = ConfiguredTokenvend.ServerYaml
            + "  auth:\n    service_account:\n      issuer: " + ServiceAccounts.Issuer + "\n      jwks_file: " + accounts.JwksFile + "\n"
            + "profiles:\n" + issuer.ProfileYaml("orders-api", "allow: [\"system:serviceaccount:orders:app\"]");
        await using var server = await ConfiguredTokenvend.StartAsync(config);
        var path = Path.GetTempFileName();
        try
        {
            await File.WriteAllTextAsync(path, accounts.Mint("billing", "app"));
            using var tokens = new TokenClient(new TokenClientOptions { Address = server.Address, ServiceAccountTokenPath = path });

            // tokenvend verified the token and knows the caller: billing may not use the profile.
            var refused = await Assert.ThrowsAsync<TokenvendException>(() => tokens.GetTokenAsync("orders-api"));
            Assert.Equal(StatusCode.NotFound, refused.GrpcStatusCode);

            // The kubelet rotates the file in place: the next call sends the new token.
            await File.WriteAllTextAsync(path, accounts.Mint("orders", "app") + "\n");
            File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddSeconds(1));
            var token = await tokens.GetTokenAsync("orders-api");
            Assert.StartsWith("orders-api-", token.AccessToken);

            // Without a token tokenvend does not know the caller.
            using var anonymous = new TokenClient(server.Address);
            var unknown = await Assert.ThrowsAsync<TokenvendException>(() => anonymous.GetTokenAsync("orders-api"));
            Assert.Equal(StatusCode.Unauthenticated, unknown.GrpcStatusCode);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
