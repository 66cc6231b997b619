using System;
using System.IO;
using System.Linq;
using System.Text;
using System.Text.Json;
using System.Threading.Tasks;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Xunit;

namespace Tokenvend.Client.Tests;

[Collection(TokenvendCollection.Name)]
public sealed class TokenClientTests : IDisposable
{
    private readonly TokenvendServer _server;
    private readonly GrpcChannel _channel;
    private readonly CountingInterceptor _rpcs = new();

    public TokenClientTests(TokenvendServer server)
    {
        _server = server;
        _channel = GrpcChannel.ForAddress(server.HttpAddress);
    }

    public void Dispose() => _channel.Dispose();

    /// <summary>A client whose every RPC goes through <see cref="_rpcs"/>.</summary>
    private TokenClient CountedClient(TokenClientOptions? options = null) =>
        new(_channel.Intercept(_rpcs), options);

    [Fact]
    public async Task GetToken_ReturnsBearerJwtWithReadyToCopyHeaders()
    {
        using var tokens = new TokenClient(_server.Address);

        var token = await tokens.GetTokenAsync("demo");

        var parts = token.AccessToken.Split('.');
        Assert.Equal(3, parts.Length);
        Assert.All(parts, part => Assert.Matches("^[A-Za-z0-9_-]+$", part));
        using var header = JsonDocument.Parse(Base64UrlDecode(parts[0]));
        Assert.True(header.RootElement.TryGetProperty("alg", out _), "JWT header has no alg");
        Assert.Equal("Bearer", token.TokenType);
        Assert.Equal("demo", token.Profile);
        // 300 s tokens; the server may hand out one it cached a little earlier in this run.
        Assert.InRange(token.ExpiresAt - DateTimeOffset.UtcNow, TimeSpan.FromSeconds(200), TimeSpan.FromSeconds(305));
        Assert.Equal("Bearer " + token.AccessToken, token.Headers["authorization"]);
        Assert.Equal("Bearer " + token.AccessToken, token.Headers["Authorization"]);
    }

    [Fact]
    public async Task MinTtl_BeyondWhatTheCachedCopyCanGive_AsksTokenvendAgain()
    {
        using var tokens = CountedClient();
        await tokens.GetTokenAsync("demo");

        // 280 s + the 30 s margin (10 % of 300 s) is more than any 300 s token has left.
        var token = await tokens.GetTokenAsync("demo", TimeSpan.FromSeconds(280));

        Assert.Equal(2, _rpcs.Calls);
        Assert.True(token.ExpiresAt - DateTimeOffset.UtcNow >= TimeSpan.FromSeconds(275));
        Assert.Equal(new[] { false, true }, _rpcs.Requests.Select(r => r.MinTtl).ToArray());
    }

    [Fact]
    public async Task MinTtl_LongerThanTheProfilesTokensLive_IsOutOfRange()
    {
        using var tokens = new TokenClient(_server.Address);

        var error = await Assert.ThrowsAsync<TokenvendException>(() => tokens.GetTokenAsync("demo", TimeSpan.FromHours(1)));

        Assert.Equal(StatusCode.OutOfRange, error.GrpcStatusCode);
        Assert.False(error.Retryable);
        Assert.IsType<RpcException>(error.InnerException);
    }

    [Fact]
    public async Task TokenvendUnreachable_ServesTheStillValidCopy_AndAsksAgainAtMostOnceASecond()
    {
        using var tokens = CountedClient();
        var first = await tokens.GetTokenAsync("demo");
        // A min TTL that the copy meets, but not with its margin on top: the client must ask.
        var minTtl = first.ExpiresAt - DateTimeOffset.UtcNow - TimeSpan.FromSeconds(10);

        _rpcs.Unavailable = true;

        Assert.Same(first, await tokens.GetTokenAsync("demo", minTtl));
        Assert.Equal(2, _rpcs.Calls);
        Assert.Same(first, await tokens.GetTokenAsync("demo", minTtl));
        Assert.Equal(2, _rpcs.Calls);
        // A copy that cannot serve the caller is never passed off as fresh.
        var error = await Assert.ThrowsAsync<TokenvendException>(() => tokens.GetTokenAsync("demo", TimeSpan.FromHours(1)));
        Assert.Equal(StatusCode.Unavailable, error.GrpcStatusCode);
        Assert.True(error.Retryable);
    }

    [Fact]
    public async Task ServiceAccountToken_IsSentAsBearerAndRereadWhenRotated()
    {
        var path = Path.GetTempFileName();
        try
        {
            await File.WriteAllTextAsync(path, "first-identity\n");
            using var tokens = CountedClient(new TokenClientOptions { ServiceAccountTokenPath = path });
            // More than a 300 s token keeps past its margin: every call goes to tokenvend.
            var minTtl = TimeSpan.FromSeconds(290);

            await tokens.GetTokenAsync("demo", minTtl);
            await File.WriteAllTextAsync(path, "second-identity");
            File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(1));
            await tokens.GetTokenAsync("demo", minTtl);

            Assert.Equal(new[] { "Bearer first-identity", "Bearer second-identity" }, _rpcs.Authorizations.ToArray());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task ToString_NeverShowsTheToken()
    {
        using var tokens = new TokenClient(_server.Address);

        var token = await tokens.GetTokenAsync("demo");

        Assert.DoesNotContain(token.AccessToken, token.ToString());
        Assert.Contains("redacted", token.ToString());
        Assert.Contains("demo", token.ToString());
    }

    [Fact]
    public async Task Disposed_Throws()
    {
        var tokens = new TokenClient(_server.Address);
        tokens.Dispose();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => tokens.GetTokenAsync("demo"));
    }

    private static string Base64UrlDecode(string part)
    {
        var base64 = part.Replace('-', '+').Replace('_', '/');
        base64 += new string('=', (4 - base64.Length % 4) % 4);
        return Encoding.UTF8.GetString(Convert.FromBase64String(base64));
    }
}
