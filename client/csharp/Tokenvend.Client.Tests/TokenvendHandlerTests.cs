using System;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Threading.Tasks;
using Microsoft.Extensions.DependencyInjection;
using Xunit;

namespace Tokenvend.Client.Tests;

[Collection(TokenvendCollection.Name)]
public sealed class TokenvendHandlerTests
{
    private readonly TokenvendServer _server;

    public TokenvendHandlerTests(TokenvendServer server) => _server = server;

    // No proxy: the upstream stand-in is on loopback whatever HTTP_PROXY says.
    private static HttpClient HttpClientFor(TokenClient tokens, bool bufferContentForRetry = false) =>
        new(new TokenvendHandler(tokens, "demo", new SocketsHttpHandler { UseProxy = false }) { BufferContentForRetry = bufferContentForRetry });

    private static HttpStatusCode UnauthorizedOnce(int n) => n == 0 ? HttpStatusCode.Unauthorized : HttpStatusCode.OK;

    [Fact]
    public async Task Conformance_http_401_retried_once()
    {
        await using var upstream = new RecordingHttpServer(UnauthorizedOnce);
        using var tokens = new TokenClient(_server.Address);
        var before = await tokens.GetTokenAsync("demo");
        using var http = HttpClientFor(tokens);

        using var response = await http.GetAsync(new Uri(upstream.BaseAddress, "api/order/response"));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var seen = upstream.Requests;
        Assert.Equal(2, seen.Count);
        Assert.Equal("Bearer " + before.AccessToken, seen[0].Authorization);
        Assert.NotEqual(seen[0].Authorization, seen[1].Authorization);
        Assert.Equal("Bearer " + await _server.CurrentAccessTokenAsync(), seen[1].Authorization);
    }

    [Fact]
    public async Task Unauthorized_Again_IsReturnedAfterExactlyTwoRequests()
    {
        await using var upstream = new RecordingHttpServer(_ => HttpStatusCode.Unauthorized);
        using var tokens = new TokenClient(_server.Address);
        using var http = HttpClientFor(tokens);

        using var response = await http.GetAsync(upstream.BaseAddress);

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal(2, upstream.Requests.Count);
    }

    [Fact]
    public async Task Unauthorized_BufferedBody_IsSentAgain()
    {
        await using var upstream = new RecordingHttpServer(UnauthorizedOnce);
        using var tokens = new TokenClient(_server.Address);
        using var http = HttpClientFor(tokens);

        using var response = await http.PostAsync(upstream.BaseAddress, new StringContent("{\"order\":42}", Encoding.UTF8, "application/json"));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(2, upstream.Requests.Count);
        Assert.All(upstream.Requests, seen => Assert.Equal("{\"order\":42}", seen.Body));
    }

    [Fact]
    public async Task Unauthorized_StreamBody_IsNotRetried()
    {
        await using var upstream = new RecordingHttpServer(UnauthorizedOnce);
        using var tokens = new TokenClient(_server.Address);
        using var http = HttpClientFor(tokens);

        using var response = await http.PostAsync(upstream.BaseAddress, new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes("streamed"))));

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        var seen = Assert.Single(upstream.Requests);
        // Not re-sent, but reported: tokenvend has replaced the refused token.
        Assert.NotEqual("Bearer " + await _server.CurrentAccessTokenAsync(), seen.Authorization);
    }

    [Fact]
    public async Task Unauthorized_StreamBody_IsRetriedWhenBufferingIsOn()
    {
        await using var upstream = new RecordingHttpServer(UnauthorizedOnce);
        using var tokens = new TokenClient(_server.Address);
        using var http = HttpClientFor(tokens, bufferContentForRetry: true);

        using var response = await http.PostAsync(upstream.BaseAddress, new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes("streamed"))));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(2, upstream.Requests.Count);
        Assert.All(upstream.Requests, seen => Assert.Equal("streamed", seen.Body));
    }

    [Fact]
    public async Task TokenHeaders_ReplaceADefaultAuthorization()
    {
        await using var upstream = new RecordingHttpServer(_ => HttpStatusCode.OK);
        using var tokens = new TokenClient(_server.Address);
        using var http = HttpClientFor(tokens);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "stale");

        using var response = await http.GetAsync(upstream.BaseAddress);

        var token = await tokens.GetTokenAsync("demo");
        Assert.Equal("Bearer " + token.AccessToken, Assert.Single(upstream.Requests).Authorization);
    }

    [Fact]
    public async Task HttpClientFactory_AddTokenvend_SetsTheToken()
    {
        await using var upstream = new RecordingHttpServer(_ => HttpStatusCode.OK);
        var services = new ServiceCollection();
        services.AddTokenvendClient(options => options.Address = _server.Address);
        services.AddHttpClient("upstream", http => http.BaseAddress = upstream.BaseAddress)
            .ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler { UseProxy = false })
            .AddTokenvend("demo");
        await using var provider = services.BuildServiceProvider();

        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("upstream");
        using var response = await http.GetAsync("api/order/response");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("Bearer " + await _server.CurrentAccessTokenAsync(), Assert.Single(upstream.Requests).Authorization);
    }
}
